"""The typer app: migrate --print (cluster), seed with progress, report formats, --by validation."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from streams.analytics.cli import app
from streams.settings import get_settings
from tests.fixtures.chdb import chdb_test_root

runner = CliRunner()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = chdb_test_root() / f"cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIFLEET_HOME", str(path / "home"))
    monkeypatch.setenv("AIFLEET_CLICKHOUSE__DATA_PATH", str(path / "chdb"))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()
    shutil.rmtree(path, ignore_errors=True)


def test_migrate_print_renders_the_cluster_variant(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLEET_CLICKHOUSE__CLUSTER", "analytics")
    get_settings.cache_clear()
    result = runner.invoke(app, ["migrate", "--print", "--ttl-days", "30"])
    assert result.exit_code == 0, result.output
    assert "ON CLUSTER 'analytics'" in result.output and "ReplicatedReplacingMergeTree" in result.output
    assert "INTERVAL 30 DAY" in result.output
    assert not (env / "chdb").exists()  # --print touches no store


def test_seed_then_reports(env: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 0 and "applied: 001, 002, 003, 004" in result.output
    assert runner.invoke(app, ["migrate"]).output.strip() == "up to date"
    result = runner.invoke(app, ["seed", "--events", "3000", "--batch", "1000", "--days", "2"])
    assert result.exit_code == 0, result.output
    assert "seeded 3000 new events" in result.output
    again = runner.invoke(app, ["seed", "--events", "3000", "--batch", "1000", "--days", "2"])
    assert "seeded 0 new events (3000 already stored)" in again.output
    result = runner.invoke(app, ["report", "cost", "--since", "3d", "--by", "provider", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.output)
    assert sum(r["requests"] for r in doc["rows"]) == 3000
    from streams.analytics.synthetic import synthetic_events

    expected = sum(Decimal(str(e.cost_usd)) for e in synthetic_events(3000, span=timedelta(days=2)))
    assert abs(sum(Decimal(r["cost_usd"]) for r in doc["rows"]) - expected) < Decimal("0.005")
    out = tmp_path / "cost.html"
    result = runner.invoke(app, ["report", "cost", "--since", "3d", "--format", "html", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("<svg") == 3
    csv_result = runner.invoke(app, ["report", "latency", "--by", "provider,model", "--format", "csv"])
    assert csv_result.exit_code == 0 and csv_result.output.startswith("provider,model,attempts,avg_ms")


def test_report_rejects_bad_input(env: Path) -> None:
    result = runner.invoke(app, ["report", "cost", "--by", "tenant;drop"])
    assert result.exit_code == 2 and "cannot group by" in result.output
    result = runner.invoke(app, ["report", "cost", "--format", "xml"])
    assert result.exit_code == 2 and "unknown format" in result.output
    for since in ("3000000d", "100000w", "99999999999999999999d", "1969-12-31", "0001-01-01T00:00+01:00"):
        result = runner.invoke(app, ["report", "cost", "--since", since])
        assert result.exit_code == 2, (since, result.output)
        assert "error:" in result.output and "1970-01-01" in result.output, result.output
