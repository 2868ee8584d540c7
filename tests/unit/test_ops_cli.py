"""``aifleet scale`` commands (lag read from a stub) and the /proc/stat CPU reader."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from streams.errors import AifleetError
from streams.ops import cpu as cpu_mod
from streams.ops import lag as lag_mod
from streams.ops.cli import app
from streams.ops.lag import LagReport, PartitionLag

runner = CliRunner()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake_lag(bootstrap: str, group: str, topics: list[str], **kw: Any) -> LagReport:
        seen.append({"bootstrap": bootstrap, "group": group, "topics": list(topics), **kw})
        parts = [PartitionLag("aifleet.requests", p, committed=0, start=0, end=100) for p in range(4)]
        parts += [PartitionLag("aifleet.routed", p, committed=10, start=0, end=10) for p in range(4)]
        return LagReport(group=group, partitions=parts)

    monkeypatch.setattr(lag_mod, "consumer_lag", fake_lag)
    monkeypatch.setattr(cpu_mod, "cpu_percent", lambda *a, **k: 35.0)
    monkeypatch.delenv("AIFLEET_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("AIFLEET_KAFKA__TOPIC_PREFIX", raising=False)
    return seen


def test_advise_json_uses_the_worker_group_and_topics(calls: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["advise", "--bootstrap", "k:9092", "--workers", "2", "--p95", "1.2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert calls[0]["bootstrap"] == "k:9092"
    assert calls[0]["group"] == "aifleet-aifleet"
    assert calls[0]["topics"] == ["aifleet.requests", "aifleet.routed"]
    assert doc["lag_total"] == 400
    assert doc["lag_by_topic"] == {"aifleet.requests": 400, "aifleet.routed": 0}
    assert doc["partitions"] == 4
    assert doc["cpu_pct"] == 35.0
    assert doc["needs"] == {"lag": 4, "cpu": 1}
    assert (doc["action"], doc["workers"]) == ("scale_up", 3)


def test_advise_table_explains(calls: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["advise", "--workers", "4", "--cpu", "10", "--group", "g", "--topic", "t1"])
    assert result.exit_code == 0, result.output
    assert calls[0]["group"] == "g"
    assert calls[0]["topics"] == ["t1"]
    assert "hold" in result.stdout
    assert "hold at 4: signals within targets" in result.stdout
    assert "lag 400 at 100/worker needs 4" in result.stdout


def test_advise_cooldown_flag(calls: list[dict[str, Any]]) -> None:
    import time

    result = runner.invoke(app, ["advise", "--json", "--last-scale-at", str(time.time() - 10)])
    doc = json.loads(result.stdout)
    assert doc["action"] == "hold"
    assert doc["desired_workers"] == 2
    assert 45 < doc["cooldown_remaining_s"] <= 50


def test_lag_json(calls: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["lag", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["total"] == 400
    assert doc["partitions"][0] == {"topic": "aifleet.requests", "partition": 0, "committed": 0, "end": 100, "lag": 100}


def test_unreachable_cluster_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **k: Any) -> LagReport:
        raise AifleetError("could not read consumer lag of group 'g': timed out")

    monkeypatch.setattr(lag_mod, "consumer_lag", broken)
    result = runner.invoke(app, ["advise", "--cpu", "1"])
    assert result.exit_code == 2


PROC_STAT_0 = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\nintr 1\n"
PROC_STAT_1 = "cpu  250 0 150 850 150 0 0 0 0 0\ncpu0 1 0 1 1 1 0 0 0 0 0\n"


def test_parse_proc_stat() -> None:
    assert cpu_mod.parse_proc_stat(PROC_STAT_0) == (200, 1000)
    with pytest.raises(ValueError):
        cpu_mod.parse_proc_stat("intr 1\n")


def test_cpu_percent_from_two_samples() -> None:
    samples = iter([PROC_STAT_0, PROC_STAT_1])
    slept: list[float] = []
    pct = cpu_mod.cpu_percent(0.25, read=lambda: next(samples), sleep=slept.append)
    # busy 200 -> 400 (+200), total 1000 -> 1400 (+400)
    assert pct == 50.0
    assert slept == [0.25]


def test_cpu_percent_on_this_host_is_a_percentage() -> None:
    pct = cpu_mod.cpu_percent(0.05)
    assert pct is None or 0.0 <= pct <= 100.0
