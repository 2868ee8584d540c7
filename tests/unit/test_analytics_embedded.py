"""Embedded mode across processes: a report taken while another process owns chDB and writes.

The writer subprocess owns the chDB data path, runs the usage sink and serves the loopback query
endpoint. This (test) process never opens chDB: it reads through ``open_reader``, exactly as
``aifleet report`` does, while the writer keeps inserting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from streams.analytics.client import open_reader
from streams.analytics.endpoint import ADVERT_FILE, EndpointReader, read_advertisement
from streams.analytics.errors import AnalyticsQueryError
from streams.analytics.reports import report
from streams.settings import ClickHouseSettings
from tests.fixtures.chdb import chdb_test_root

REPO = Path(__file__).resolve().parents[2]
BATCH = 200
COST = "0.001234"

WRITER = f"""
import asyncio, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from schemas.usage import UsageEvent
from streams.analytics.client import create_client
from streams.analytics.migrate import RenderOptions, migrate
from streams.analytics.sink import UsageSink
from streams.settings import ClickHouseSettings

settings = ClickHouseSettings(data_path=Path(sys.argv[1]))
client = create_client(settings)
migrate(client, RenderOptions.from_settings(settings))
sink = UsageSink(settings, client=client)
now = datetime.now(UTC)

def batch(b):
    return [
        UsageEvent(event_id=f"w{{b}}-{{i}}:1", request_id=f"w{{b}}-{{i}}", tenant="acme", provider="openai",
                   model="gpt-4o", status="ok", cost_usd={COST}, ts=now - timedelta(seconds=i))
        for i in range({BATCH})
    ]

async def main():
    endpoint = await sink.start_query_endpoint()
    print("READY", flush=True)
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    b = 0
    while not stop.done():
        await sink.write(batch(b))
        b += 1
        print("WROTE", b, flush=True)
        await asyncio.sleep(0.01)  # pacing, not synchronisation
    for r in range(b):  # replay everything once: must not change any total
        await sink.write(batch(r))
    print("DONE", b * {BATCH}, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # wait for EOF
    await endpoint.stop()
    sink.close()

asyncio.run(main())
"""

OPENER = """
import sys
from pathlib import Path
from streams.analytics.client import create_client
from streams.settings import ClickHouseSettings
create_client(ClickHouseSettings(data_path=Path(sys.argv[1])))
"""


@pytest.fixture
def data_path() -> Iterator[Path]:
    path = chdb_test_root() / f"embedded-{uuid.uuid4().hex[:8]}"
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


def _read_until(proc: subprocess.Popen[str], prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"writer exited before {prefix!r}: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.slow
def test_report_while_another_process_writes(data_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    try:
        _read_until(proc, "READY")
        _read_until(proc, "WROTE 3")
        settings = ClickHouseSettings(data_path=data_path)

        # Why the endpoint exists: a second process cannot open the owned chDB path.
        opener = subprocess.run(
            [sys.executable, "-c", OPENER, str(data_path)],
            check=False,
            capture_output=True,
            text=True,
            env=_env(),
            cwd=REPO,
            timeout=120,
        )
        assert opener.returncode != 0 and "EmbeddedStoreLocked" in opener.stderr

        reader = open_reader(settings)
        assert isinstance(reader, EndpointReader)
        try:
            first = report(reader, "cost", since="1h", by="tenant,provider")
            seen = first.total("requests") // BATCH
            # The writer is still going: wait until it reports a batch beyond what the first report saw.
            while int(_read_until(proc, "WROTE").split()[1]) <= seen:
                pass
            second = report(reader, "cost", since="1h", by="tenant,provider")
            assert proc.poll() is None  # both reports were taken while the writer was writing
            n1, n2 = first.total("requests"), second.total("requests")
            assert n1 >= 3 * BATCH and n1 % BATCH == 0
            assert n2 > n1 and n2 % BATCH == 0
            assert first.total("cost_usd") == Decimal(COST) * n1  # a consistent snapshot, exact money
            assert isinstance(second.total("cost_usd"), Decimal)

            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            done = int(_read_until(proc, "DONE").split()[1])
            final = report(reader, "cost", since="1h")
            assert final.total("requests") == done  # the replay of every batch counted once
            assert final.total("cost_usd") == Decimal(COST) * done
            # The endpoint is read-only and one-statement-only.
            with pytest.raises(AnalyticsQueryError):
                reader.query_rows("DROP TABLE aifleet.usage_events")
            with pytest.raises(AnalyticsQueryError):
                reader.query_rows("SELECT 1; DROP TABLE aifleet.usage_events")
            with pytest.raises(AnalyticsQueryError):
                reader.query_rows("INSERT INTO aifleet.prompts (request_id) SELECT 'x'")
            with pytest.raises(AnalyticsQueryError, match=r"READONLY|readonly"):
                reader.query_rows("SELECT * FROM aifleet.usage_events SETTINGS readonly = 0")
        finally:
            reader.close()
        advert = read_advertisement(data_path)
        assert advert is not None and advert.pid == proc.pid
        assert oct((data_path / ADVERT_FILE).stat().st_mode & 0o777) == "0o600"
        bad = EndpointReader(advert.url, "wrong-token")
        assert bad.ping() is False
        bad.close()
    finally:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert read_advertisement(data_path) is None  # withdrawn on stop
