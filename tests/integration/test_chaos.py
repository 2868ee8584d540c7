"""The fault suite at a small size: after each fault every request still ends in one terminal response.

Runs ``streams.chaos.run_suite`` as ``aifleet chaos`` does, on a broker of its own (the suite restarts it),
with 600 requests per scenario and ClickHouse away for 10 s instead of 30.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from pathlib import Path

import pytest
from rich.console import Console

from streams.chaos import SCENARIOS, ChaosOptions, ephemeral_port_range, run_suite
from streams.chaos_cli import render
from streams.settings import Settings
from tests.fixtures.pipeline import _jar_cache, free_port, patched_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REQUESTS = int(os.environ.get("AIFLEET_CHAOS_REQUESTS", "600"))
REPLAYING = {"kill_worker", "broker_restart"}
"""Faults after which uncommitted records are processed again (at-least-once): raw duplicate responses are
expected there, and the client drops them. Elsewhere there must be none."""


def broker_port_pair() -> int:
    """A free port p (p+1 free too) below the ephemeral range: a port inside it can be taken, while the broker
    is down, by a client connecting to itself, and the restart scenario would then measure that instead."""
    low = (ephemeral_port_range() or (32768, 60999))[0]
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(20000, low - 2)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port pair below the ephemeral range")


def test_fault_suite_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if _jar_cache().exists():
        (home / "cache").symlink_to(_jar_cache())  # the jars are fetched once per machine
    port = broker_port_pair()
    env = {
        "AIFLEET_HOME": str(home),
        "AIFLEET_KAFKA__PORT": str(port),
        "AIFLEET_KAFKA__CONTROLLER_PORT": str(port + 1),
        "AIFLEET_EMULATOR__PORT": str(free_port()),
    }
    with patched_env(env):
        settings = Settings()
    options = ChaosOptions(requests=REQUESTS, clickhouse_pause_s=10.0, scenario_timeout_s=150.0, settle_s=2.0)
    report = run_suite(options, settings, say=print)
    Console(file=sys.stdout, width=150).print(render(report))
    for r in report.results:
        print(r.scenario, r.recovery, r.measurements, r.notes)

    assert [r.scenario for r in report.results] == list(SCENARIOS)
    for r in report.results:
        assert r.lost == 0, (r.scenario, r.notes)
        assert r.send_failures == 0, (r.scenario, r.notes)
        assert r.answered == r.sent, r.scenario  # one terminal response per request, as the client sees it
        assert r.conflicting_responses == 0, r.scenario  # and never an ok and an error for the same request
        assert r.recovery_s is not None, (r.scenario, r.notes)
        assert all(r.checks.values()), (r.scenario, r.checks, r.notes)
        assert r.passed, r.scenario
        if r.scenario in REPLAYING:
            assert r.duplicate_responses <= r.sent, r.scenario
        else:
            assert r.duplicate_responses == 0, r.scenario
            assert r.duplicate_provider_calls == 0, r.scenario
    by_name = {r.scenario: r for r in report.results}
    assert by_name["kill_worker"].ok == REQUESTS
    assert by_name["clickhouse_away"].measurements["usage_events_in_report"] >= REQUESTS
    assert by_name["malformed_flood"].measurements["malformed_missing_from_dlq"] == 0
    assert by_name["provider_away"].measurements["served_by_fallback"] > 0
