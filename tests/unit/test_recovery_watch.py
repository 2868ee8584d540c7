"""streams.recovery_watch: which changelog partitions count as stalled, where they are re-seeked, and when.

The decision functions are pure; ``RecoveryWatchdog.check`` is driven on a stand-in app carrying only
the recovery state and consumer calls it reads, with a clock the test moves.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from streams import metrics as metrics_mod
from streams.metrics import AifleetMetrics
from streams.recovery_watch import RecoveryWatchdog, Stall, find_stalls, seek_offset

CL = "app-quota-changelog"
A, B, C = TP(CL, 0), TP(CL, 1), TP(CL, 2)


def test_seek_offset_is_after_the_last_applied_record_or_the_log_start() -> None:
    assert seek_offset(None) == 0
    assert seek_offset(-1) == 0  # faust's "nothing applied" on a log that starts at 0
    assert seek_offset(0) == 1
    assert seek_offset(41) == 42
    # a compacted log starting at 100: faust's _build_offsets stores earliest - 1 = 99
    assert seek_offset(99) == 100
    assert Stall(tp=A, applied=7, highwater=9, quiet_s=20.0).seek_to == 8


def test_only_quiet_partitions_with_records_left_are_stalled() -> None:
    offsets = {A: -1, B: 9, C: 3}
    highwaters = {A: 9, B: 9, C: 9}  # B is done
    quiet = {A: 0.0, B: 0.0, C: 10.0}  # C received a record 10 s in
    stalls = find_stalls([A, B, C], offsets, highwaters, quiet, now=15.0, stall_after_s=15.0)
    assert stalls == [Stall(tp=A, applied=-1, highwater=9, quiet_s=15.0)]
    assert find_stalls([A, B, C], offsets, highwaters, quiet, now=14.9, stall_after_s=15.0) == []
    assert [s.tp for s in find_stalls([C, A], offsets, highwaters, quiet, now=30.0, stall_after_s=15.0)] == [A, C]


def test_partitions_recovery_has_not_measured_yet_are_left_alone() -> None:
    quiet = {A: 0.0, B: 0.0, C: 0.0}
    # no offset, no highwater, or no time yet: faust is still building them
    assert find_stalls([A, B, C], {A: None, B: 3}, {A: 9, C: 9}, quiet, now=99.0, stall_after_s=1.0) == []
    # an empty changelog: highwater -1, offset -1
    assert find_stalls([A], {A: -1}, {A: -1}, quiet, now=99.0, stall_after_s=1.0) == []


class _Signal:
    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def connect(self, fun: Any, **_: Any) -> Any:
        self.handlers.append(fun)
        return fun


class FakeRecovery:
    def __init__(self) -> None:
        self.in_recovery = True
        self._recovery_started_at: float | None = 100.0
        self.active_tps = {A, B}
        self.active_offsets: Counter[TP] = Counter({A: -1, B: 4})
        self.active_highwaters: Counter[TP] = Counter({A: 9, B: 9})
        self._active_events_received_at: dict[TP, float] = {}
        self._generation_id = 7


class FakeConsumer:
    def __init__(self, recovery: FakeRecovery) -> None:
        self.recovery = recovery
        self.positions = {A: 10, B: 5}
        self.sought: list[dict[TP, int]] = []
        self.resumed: list[set[TP]] = []
        self.on_seek: Any = None

    def assignment(self) -> set[TP]:
        return {A, B}

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.sought.append(dict(partitions))
        if self.on_seek:
            self.on_seek()

    def resume_partitions(self, tps: set[TP]) -> None:
        self.resumed.append(set(tps))


class FakeApp:
    def __init__(self) -> None:
        self.recovery = FakeRecovery()
        self.tables = type("Tables", (), {"recovery": self.recovery})()
        self.consumer = FakeConsumer(self.recovery)
        self.consumer_generation_id = 7
        self.on_partitions_assigned = _Signal()
        self.futures: list[Any] = []

    def add_future(self, coro: Any) -> Any:
        coro.close()  # the loop itself is not run here
        self.futures.append(coro)
        return coro


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def m(monkeypatch: pytest.MonkeyPatch) -> AifleetMetrics:
    fresh = AifleetMetrics(CollectorRegistry(), process_metrics=False)
    monkeypatch.setattr(metrics_mod, "_default", fresh)
    return fresh


def reseeks(m: AifleetMetrics) -> float | None:
    return m.registry.get_sample_value("aifleet_recovery_reseeks_total", {"topic": CL})


def stuck(m: AifleetMetrics) -> float | None:
    return m.registry.get_sample_value("aifleet_recovery_stuck_partitions", {"topic": CL})


async def test_a_stalled_partition_is_reseeked_after_the_last_applied_record_and_resumed(
    m: AifleetMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    app, clock = FakeApp(), Clock()
    dog = RecoveryWatchdog(app, stall_after_s=15.0, clock=clock)
    app.recovery._active_events_received_at[B] = 110.0  # B is receiving records
    clock.now = 114.0
    assert await dog.check() == []
    clock.now = 115.0
    stalls = await dog.check()
    assert [s.tp for s in stalls] == [A]
    assert app.consumer.sought == [{A: 0}]
    assert app.consumer.resumed == [{A}]
    assert reseeks(m) == 1
    for part in ("stalled in recovery", "fetch position 10", "re-seeking to 0"):
        assert part in caplog.text
    app.recovery.active_offsets[B] = 9  # B is restored
    # the clock restarts at the re-seek: not again until stall_after_s later
    clock.now = 129.0
    assert await dog.check() == []
    clock.now = 130.5
    assert [s.tp for s in await dog.check()] == [A]
    assert reseeks(m) == 2


async def test_progress_resets_the_count_and_an_error_follows_max_reseeks_without_it(
    m: AifleetMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    app, clock = FakeApp(), Clock()
    app.recovery.active_tps = {A}
    dog = RecoveryWatchdog(app, stall_after_s=10.0, max_reseeks=2, clock=clock)
    for i in range(1, 3):
        clock.now = 100.0 + 10.0 * i
        assert len(await dog.check()) == 1
    assert "still stalled" not in caplog.text and not stuck(m)
    clock.now = 130.0
    assert len(await dog.check()) == 1  # the third: an ERROR, and the gauge
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "after 2 re-seeks" in errors[0].getMessage()
    assert stuck(m) == 1
    assert reseeks(m) == 3  # it keeps trying
    # records arrive after that re-seek: progress clears the gauge and the count
    app.recovery.active_offsets[A] = 5
    app.recovery._active_events_received_at[A] = 131.0
    clock.now = 132.0
    assert await dog.check() == []
    assert stuck(m) == 0
    clock.now = 141.0
    await dog.check()
    assert app.consumer.sought[-1] == {A: 6}
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


async def test_nothing_is_done_outside_recovery_or_during_a_rebalance(m: AifleetMetrics) -> None:
    app, clock = FakeApp(), Clock(200.0)
    dog = RecoveryWatchdog(app, stall_after_s=1.0, clock=clock)
    app.consumer_generation_id = 8  # a rebalance started after this recovery's
    assert await dog.check() == []
    app.consumer_generation_id = 7
    app.recovery.in_recovery = False
    assert await dog.check() == []
    assert app.consumer.sought == [] and reseeks(m) is None


async def test_a_new_recovery_restarts_the_clock_and_the_count(m: AifleetMetrics) -> None:
    app, clock = FakeApp(), Clock(120.0)
    app.recovery.active_tps = {A}
    dog = RecoveryWatchdog(app, stall_after_s=10.0, max_reseeks=1, clock=clock)
    assert len(await dog.check()) == 1
    app.recovery._recovery_started_at = 125.0  # another rebalance, another recovery
    clock.now = 134.0
    assert await dog.check() == []
    clock.now = 135.0
    assert len(await dog.check()) == 1
    assert not stuck(m)  # one re-seek in this recovery, not two


async def test_a_partition_that_moved_on_while_the_watchdog_waited_is_left_alone(m: AifleetMetrics) -> None:
    app, clock = FakeApp(), Clock(120.0)
    app.recovery.active_tps = {A}

    async def position(tp: TP) -> int:
        app.recovery.active_offsets[A] = 9  # recovery caught up meanwhile
        return 10

    app.consumer.position = position  # type: ignore[method-assign]
    dog = RecoveryWatchdog(app, stall_after_s=10.0, clock=clock)
    assert await dog.check() == []
    assert app.consumer.sought == [] and reseeks(m) is None


async def test_a_partition_is_not_resumed_when_recovery_ended_during_the_seek(m: AifleetMetrics) -> None:
    app, clock = FakeApp(), Clock(120.0)
    app.recovery.active_tps = {A}

    def end() -> None:
        app.recovery.in_recovery = False

    app.consumer.on_seek = end
    dog = RecoveryWatchdog(app, stall_after_s=10.0, clock=clock)
    assert len(await dog.check()) == 1
    assert app.consumer.resumed == []


async def test_install_starts_the_loop_once_on_partition_assignment() -> None:
    app = FakeApp()
    dog = RecoveryWatchdog(app, stall_after_s=9.0).install()
    assert dog.interval_s == 3.0
    (handler,) = app.on_partitions_assigned.handlers
    await handler(app, set(), signal=None)  # how mode calls it: (sender, assigned, signal=...)
    await handler(app, set(), signal=None)  # how mode calls it: (sender, assigned, signal=...)
    assert len(app.futures) == 1
