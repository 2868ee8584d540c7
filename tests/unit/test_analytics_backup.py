"""Backup and restore of the embedded store (real chDB in a scratch directory), and the CLI around them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streams.analytics import backup as b
from streams.analytics.cli import app
from streams.analytics.client import create_client
from streams.analytics.errors import (
    BackupExists,
    BackupNotFound,
    BackupPathNotAllowed,
    EmbeddedStoreLocked,
    RestoreTargetExists,
)
from streams.analytics.migrate import RenderOptions, migrate
from streams.analytics.sink import UsageSink
from streams.analytics.synthetic import synthetic_events
from streams.settings import ClickHouseSettings, Settings, get_settings
from tests.fixtures.chdb import chdb_test_root

REPO = Path(__file__).resolve().parents[2]
DB = "aifleet"
END = datetime.now(UTC)  # within the tables' TTL
runner = CliRunner()


@pytest.fixture
def root() -> Iterator[Path]:
    path = chdb_test_root() / f"backup-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _settings(root: Path) -> ClickHouseSettings:
    return ClickHouseSettings(data_path=root / "chdb", backup_path=root / "backups")


def _seed(client: Any, settings: ClickHouseSettings, n: int, seed_value: int) -> None:
    sink = UsageSink(settings, client=client)
    sink.write_sync(list(synthetic_events(n, seed=seed_value, span=timedelta(days=2), end=END)))


def _totals(client: Any) -> tuple[int, Decimal, int]:
    """Rows and money in the base table, and requests counted by the hourly rollup (fed by a view)."""
    rows, cost = client.query(f"SELECT count(), sum(cost_usd) FROM {DB}.usage_events FINAL").result_rows[0]
    rolled = client.query(f"SELECT sum(requests) FROM {DB}.usage_hourly").result_rows[0][0]
    return int(rows), Decimal(str(cost)), int(rolled)


def test_rows_survive_a_drop_and_a_lost_data_directory(root: Path) -> None:
    settings = _settings(root)
    client = create_client(settings)
    try:
        migrate(client, RenderOptions.from_settings(settings))
        _seed(client, settings, 3000, seed_value=1)
        before = _totals(client)
        assert before[0] == 3000 and before[2] == 3000

        dest = root / "backups" / "first"
        result = b.backup(client, DB, dest)
        assert result.status == "BACKUP_CREATED" and result.database == DB
        assert result.files > 0 and result.size_bytes > 0 and result.seconds >= 0
        assert (dest / ".backup").is_file()
        with pytest.raises(BackupExists, match="already exists"):
            b.backup(client, DB, dest)
        with pytest.raises(BackupPathNotAllowed):  # the engine itself refuses paths outside backup_path
            b.backup(client, DB, root / "elsewhere")

        client.command(f"DROP DATABASE {DB} SYNC")
        restored = b.restore(client, DB, dest)
        assert restored.status == "RESTORED" and not restored.replaced and restored.tables >= 8
        assert _totals(client) == before  # restoring the rollup tables' data does not fire the views again
    finally:
        client.close()

    shutil.rmtree(settings.data_path or root)  # the whole store is gone; the backup directory is not
    client = create_client(settings)
    try:
        assert not b.database_exists(client, DB)
        b.restore(client, DB, root / "backups" / "first")
        assert _totals(client) == before
        assert migrate(client, RenderOptions.from_settings(settings)) == []  # the schema came back with it
    finally:
        client.close()


def test_restore_refuses_an_existing_database_and_replace_checks_the_backup_first(root: Path) -> None:
    settings = _settings(root)
    client = create_client(settings)
    try:
        migrate(client, RenderOptions.from_settings(settings))
        _seed(client, settings, 1000, seed_value=2)
        dest = root / "backups" / "b1"
        b.backup(client, DB, dest)
        _seed(client, settings, 500, seed_value=3)  # written after the backup
        assert _totals(client)[0] == 1500

        with pytest.raises(RestoreTargetExists, match="--replace"):
            b.restore(client, DB, dest)
        with pytest.raises(BackupNotFound):
            b.restore(client, DB, root / "backups" / "missing", replace=True)
        assert _totals(client)[0] == 1500  # a missing backup dropped nothing
        assert not b.database_exists(client, DB + b.PROBE_SUFFIX)

        replaced = b.restore(client, DB, dest, replace=True)
        assert replaced.replaced
        assert _totals(client)[:1] == (1000,)  # back to the backup's state
    finally:
        client.close()


def test_local_locations_and_targets(root: Path) -> None:
    settings = _settings(root)
    allowed = (root / "backups").resolve()
    assert b.check_local_location(settings, Path("nightly")) == allowed / "nightly"
    assert b.check_local_location(settings, root / "backups" / "x" / "y") == allowed / "x" / "y"
    for outside in (root / "other", root / "backups" / ".." / "escape", root / "backups"):
        with pytest.raises(BackupPathNotAllowed):
            b.check_local_location(settings, outside)
    stamp = b.default_destination(settings, now=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert stamp == root / "backups" / "20250304T050607Z"
    assert b.file_target("/a/it's\\x") == "File('/a/it\\'s\\\\x')"


@pytest.fixture
def cli_env(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("AIFLEET_HOME", str(root / "home"))
    monkeypatch.setenv("AIFLEET_CLICKHOUSE__DATA_PATH", str(root / "chdb"))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def test_cli_backup_restore_and_the_locked_store(cli_env: Path) -> None:
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    assert runner.invoke(app, ["seed", "--events", "2000", "--batch", "1000", "--days", "1"]).exit_code == 0
    result = runner.invoke(app, ["backup"])
    assert result.exit_code == 0, result.output
    assert "backed up database aifleet to " in result.output and " in " in result.output
    made = [p for p in (cli_env / "home" / "backups").iterdir() if p.is_dir()]
    assert len(made) == 1 and made[0].name.endswith("Z")

    result = runner.invoke(app, ["restore", "--from", str(made[0])])
    assert result.exit_code == 2 and "--replace" in result.output
    result = runner.invoke(app, ["restore", "--from", str(made[0]), "--replace"])
    assert result.exit_code == 0, result.output
    assert "replaced database aifleet from" in result.output
    result = runner.invoke(app, ["backup", "--to", str(cli_env / "not-allowed")])
    assert result.exit_code == 2 and "outside the backup directory" in result.output

    # another process owns the store (as the analytics process does): backup says to stop it first
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cli_env / "chdb")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "OPEN"
        result = runner.invoke(app, ["backup"])
        assert result.exit_code == 75, result.output
        assert "stop it first" in result.output and "aifleet sink" in result.output
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


HOLDER = """
import sys
from pathlib import Path
from streams.analytics.client import create_client
from streams.settings import ClickHouseSettings
client = create_client(ClickHouseSettings(data_path=Path(sys.argv[1])))
print("OPEN", flush=True)
sys.stdin.read()
client.close()
"""


def test_open_store_names_the_process_to_stop(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def locked(*_: Any, **__: Any) -> Any:
        raise EmbeddedStoreLocked("Unable to open the chdb engine")

    monkeypatch.setattr(b, "create_client", locked)
    with pytest.raises(EmbeddedStoreLocked, match=r"stop it first"):
        b.open_store(_settings(root))


def test_rebuild_needs_exactly_one_origin() -> None:
    for args in (["rebuild"], ["rebuild", "--since", "1h", "--from-earliest"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "exactly one of --since and --from-earliest" in result.output


def test_rebuild_moves_the_usage_sinks_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.analytics import rebuild as rb
    from streams.analytics_app import build_analytics_app

    settings = Settings(kafka_bootstrap="127.0.0.1:1", worker={"app_id": "fleet"}, kafka={"topic_prefix": "eu"})
    assert settings.analytics_group == build_analytics_app(settings).conf.id == "fleet-analytics-eu"
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        rb, "reset_offsets", lambda bootstrap, group, topic, **kw: seen.update(group=group, topic=topic)
    )
    rb.rebuild(settings)
    assert (
        seen
        == {"group": "fleet-usage-sink-eu", "topic": "eu.usage"}
        == {
            "group": settings.usage_sink_group,
            "topic": "eu.usage",
        }
    )


def test_rebuild_while_the_sink_runs_says_to_stop_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.analytics import rebuild as rb
    from streams.analytics.errors import ConsumerGroupActive

    def active(*_: Any, **__: Any) -> Any:
        raise ConsumerGroupActive("consumer group g has 1 active member(s): stop the analytics process first")

    monkeypatch.setattr(rb, "rebuild", active)
    result = runner.invoke(app, ["rebuild", "--from-earliest"])
    assert result.exit_code == 75 and "stop the analytics process first" in result.output  # retry once it is stopped


def test_apps_keep_their_table_data_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.analytics_app import build_analytics_app

    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    app = build_analytics_app(Settings(kafka_bootstrap="127.0.0.1:1", home=home))
    assert Path(app.conf.datadir).is_relative_to(home)  # faust's default would be "<app id>-data" in cwd
    assert list(cwd.iterdir()) == []
