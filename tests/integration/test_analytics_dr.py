"""Disaster-recovery drill for the analytics store, through the real pipeline and the real chDB.

Usage is served and counted; the analytics process is stopped and the store backed up
(`aifleet analytics backup`); more usage arrives while analytics is down (real requests, then a
burst of synthetic usage events on the usage topic, so the catch-up has something to measure);
the store's data directory is deleted; `aifleet analytics restore` brings the backup back,
`rebuild --since` points the sink at the backup's time, and a new analytics process catches up
from the usage topic. The recovery time (restore + rebuild + catch-up until the group has no lag
and the cost report equals every charge the clients saw) is measured against the seed's RTO; no
usage event may be lost (RPO 0: every event id on the topic is stored, once). Finally `rebuild
--from-earliest` replays the whole topic into the restored store and nothing moves (dedup).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from schemas.usage import UsageEvent
from streams.analytics.client import resolve_backup_path, resolve_data_path
from streams.analytics.endpoint import EndpointReader, read_advertisement
from streams.analytics.errors import ConsumerGroupActive
from streams.analytics.rebuild import rebuild
from streams.analytics.reports import report
from streams.analytics.synthetic import synthetic_events
from streams.bench import run_load
from streams.client import AifleetClient
from streams.ops.lag import consumer_lag
from streams.settings import Settings
from tests.fixtures.pipeline import patched_env, pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FIRST, SECOND = 300, 200
BACKLOG = 50_000  # synthetic usage events produced while the analytics process is down
SEED_RTO_S, SEED_RPO_S = 300.0, 60.0  # the seed's objectives: RTO 5 minutes, RPO 1 minute


def _cli(env: dict[str, str], *args: str) -> tuple[str, float]:
    """Run `aifleet analytics ARGS` as a user would; return its output and wall seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "analytics", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"analytics {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout, seconds


def _endpoint(settings: Settings) -> EndpointReader | None:
    """The running analytics process's query endpoint (None until it serves): this test never opens chDB."""
    advert = read_advertisement(resolve_data_path(settings.clickhouse, settings.home))
    if advert is None:
        return None
    reader = EndpointReader(advert.url, advert.token, timeout_s=30.0)
    if reader.ping():
        return reader
    reader.close()
    return None


def _progress(settings: Settings) -> tuple[Decimal, int, int] | None:
    """The bench tenant's report total and requests, and the stored usage rows (None: no endpoint yet)."""
    reader = _endpoint(settings)
    if reader is None:
        return None
    try:
        rep = report(reader, "cost", since="1d", by="tenant", tenants=("bench",))
        _, rows = reader.query_rows("SELECT count() FROM aifleet.usage_events FINAL")
        return Decimal(str(rep.total("cost_usd"))), int(rep.total("requests")), int(rows[0][0])
    finally:
        reader.close()


def _stored(settings: Settings) -> tuple[set[str], int]:
    """Every stored event id, and the requests the hourly rollup (fed by a materialized view) counted."""
    reader = _endpoint(settings)
    assert reader is not None
    try:
        _, rows = reader.query_rows("SELECT event_id FROM aifleet.usage_events FINAL")
        _, rolled = reader.query_rows("SELECT sum(requests) FROM aifleet.usage_hourly")
        return {r[0] for r in rows}, int(rolled[0][0])
    finally:
        reader.close()


async def _wait_for(
    settings: Settings, charged: Decimal, requests: int, rows: int = 0, timeout_s: float = 150.0
) -> tuple[float, float]:
    """Poll until the report's total equals ``charged`` over ``requests`` requests and ``rows`` rows are stored.

    Returns (seconds until the store answered, seconds until the condition held).
    """
    started = time.monotonic()
    ready = None
    last = None
    while time.monotonic() - started < timeout_s:
        try:
            last = _progress(settings)
        except Exception:  # noqa: BLE001 - the endpoint may be starting or stopping
            last = None
        if last is not None and ready is None:
            ready = time.monotonic() - started
        if last is not None and last[1] >= requests and last[2] >= rows and _same_money(last[0], charged, requests):
            return ready or 0.0, time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"the store did not reach ${charged} over {requests} requests, {rows} rows: {last}")


async def _catch_up(settings: Settings, timeout_s: float = 150.0) -> tuple[float, float]:
    """Wait until a freshly started analytics process serves its store and its group has no lag left.

    Offsets are committed only after their batch is stored, so no lag means every event is in. Polling
    the broker rather than the store keeps the measurement off the analytics process's CPU.
    Returns (seconds until the store answered, seconds until the lag was 0).
    """
    started = time.monotonic()
    ready = None
    while time.monotonic() - started < timeout_s:
        if ready is None:
            reader = _endpoint(settings)
            if reader is not None:
                reader.close()
                ready = time.monotonic() - started
        if ready is not None and _lag(settings) == 0:
            return ready, time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"analytics did not catch up within {timeout_s}s (lag {_lag(settings)})")


def _same_money(stored: Decimal, charged: Decimal, requests: int) -> bool:
    """Stored Decimal(18, 9) against the sum of the float charges clients saw: equal to the cent and to 1e-6 a row."""
    return round(stored, 2) == round(charged, 2) and abs(stored - charged) < Decimal("0.000001") * requests


def _produced_event_ids(bootstrap: str, topic: str, partitions: int) -> set[str]:
    """Every usage event on the topic that the sink stores (read from the start to the current end)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"dr-audit-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions) if ends[p] > 0])
        seen: set[str] = set()
        position = dict.fromkeys(range(partitions), 0)
        deadline = time.monotonic() + 60
        while any(position[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            position[msg.partition()] = msg.offset() + 1
            event = UsageEvent.from_json(msg.value() or b"")
            if event.status != "rejected":  # no call was made: the sink does not store it
                seen.add(event.event_id)
        assert all(position[p] >= ends[p] for p in ends), (position, ends)
        return seen
    finally:
        consumer.close()


def _lag(settings: Settings) -> int:
    return consumer_lag(
        settings.kafka_servers, settings.usage_sink_group, [f"{settings.kafka.topic_prefix}.usage"]
    ).total


def _produce_backlog(bootstrap: str, topic: str, n: int) -> None:
    """``n`` synthetic usage events on the usage topic, keyed by tenant like the workers' (traffic while down)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for i, event in enumerate(synthetic_events(n, seed=7, span=timedelta(hours=1), prefix="dr")):
        producer.produce(topic, event.to_json(), key=event.tenant.encode())
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


async def test_backup_restore_and_catch_up_within_the_seed_objectives(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home)
    with patched_env(env):
        settings = Settings()
    usage_topic = f"{settings.kafka.topic_prefix}.usage"
    with running_stack(env, workers=1, latency_ms=5) as stack:
        async with AifleetClient(kafka_bootstrap, topic_prefix=settings.kafka.topic_prefix) as client:
            first, responses = await run_load(client, requests=FIRST, concurrency=40, timeout_s=120, settle_s=0.5)
            assert first.ok == FIRST, first.error_reasons
            charged_first = sum((Decimal(str(r.cost_usd)) for r in responses), Decimal(0))
            assert charged_first > 0
            await _wait_for(settings, charged_first, FIRST)

            with pytest.raises(ConsumerGroupActive):  # offsets never move under a running sink
                rebuild(settings)
            analytics = next(c for c in stack.children if c.name == "analytics")
            stack.terminate(analytics)  # stopped cleanly: it commits what it stored and withdraws its endpoint

            backup_dir = resolve_backup_path(settings.clickhouse, settings.home) / "drill"
            backup_at = datetime.now(UTC)
            out, backup_s = _cli(env, "backup", "--to", str(backup_dir))
            print(f"\n{out.strip()}  [{backup_s:.1f}s wall]")
            assert "backed up database aifleet" in out and (backup_dir / ".backup").is_file()

            # usage keeps flowing into the topic while the store is down: real requests, then a synthetic burst
            second, more = await run_load(client, requests=SECOND, concurrency=40, timeout_s=120, settle_s=0.5)
            assert second.ok == SECOND, second.error_reasons
            charged_all = charged_first + sum((Decimal(str(r.cost_usd)) for r in more), Decimal(0))
        for worker in stack.worker_children():  # the drill needs no more serving; keep both cores for analytics
            stack.terminate(worker)
        _produce_backlog(kafka_bootstrap, usage_topic, BACKLOG)
        produced = _produced_event_ids(kafka_bootstrap, usage_topic, settings.kafka.partitions)
        assert len(produced) >= FIRST + SECOND + BACKLOG

        # the disaster: the whole store is gone
        shutil.rmtree(resolve_data_path(settings.clickhouse, settings.home))

        out, restore_s = _cli(env, "restore", "--from", str(backup_dir))
        print(f"{out.strip()}  [{restore_s:.1f}s wall]")
        assert "restored database aifleet" in out
        # the runbook's step: replay from the backup's time (minus a margin for what the sink had not read yet)
        since = (backup_at - timedelta(seconds=30)).isoformat()
        out, rebuild_s = _cli(env, "rebuild", "--since", since)
        print(f"{out.rstrip()}  [{rebuild_s:.1f}s wall]")
        found = re.search(r"([\d,]+) usage events to replay", out)
        assert found is not None
        to_replay = int(found.group(1).replace(",", ""))
        assert to_replay >= SECOND + BACKLOG

        stack.add_analytics()
        ready_s, catch_up_s = await _catch_up(settings)
        await _wait_for(settings, charged_all, FIRST + SECOND, rows=len(produced), timeout_s=10)
        stored, rolled = _stored(settings)
        missing = produced - stored
        assert not missing, f"RPO > 0: {len(missing)} usage events lost"
        assert len(stored) == len(produced) == rolled  # no event twice, in the table or in the rollup
        progress = _progress(settings)
        assert progress is not None
        rto_s = restore_s + rebuild_s + catch_up_s
        rate = to_replay / max(catch_up_s - ready_s, 1e-3)
        print(
            f"drill: {len(produced)} usage events produced, all {len(stored)} stored: RPO 0 "
            f"(the seed's objective: {SEED_RPO_S:.0f}s)\n"
            f"drill: restore {restore_s:.1f}s + rebuild {rebuild_s:.1f}s + catch-up {catch_up_s:.1f}s "
            f"(store open after {ready_s:.1f}s, then {to_replay} events at {rate:,.0f} events/s) "
            f"= RTO {rto_s:.1f}s (the seed's objective: {SEED_RTO_S:.0f}s); load average {os.getloadavg()[0]:.1f}"
        )
        assert rto_s < SEED_RTO_S

        # rebuild from the earliest retained event: everything is replayed, nothing is counted twice
        analytics = next(c for c in stack.children if c.name == "analytics")
        stack.terminate(analytics)
        out, _ = _cli(env, "rebuild", "--from-earliest")
        print(out.rstrip())
        assert _lag(settings) >= len(produced)
        stack.add_analytics()
        ready_s, replay_s = await _catch_up(settings)
        await _wait_for(settings, charged_all, FIRST + SECOND, rows=len(produced), timeout_s=10)
        assert _progress(settings) == progress
        assert _stored(settings) == (stored, rolled)
        print(
            f"rebuild --from-earliest: all {len(produced)} events replayed in {replay_s:.1f}s (store open after "
            f"{ready_s:.1f}s, then {len(produced) / max(replay_s - ready_s, 1e-3):,.0f} events/s); totals unchanged"
        )
