"""Circuit breaker: open after N failures, one half-open probe, close or re-open, cluster events."""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas.health import ProviderHealth
from streams.errors import BadRequest, ContentFiltered, ProviderTimeout, ProviderUnavailable, RateLimited
from streams.resilience import BreakerBoard, CircuitBreaker, FakeClock


def breaker(clock: FakeClock, events: list[ProviderHealth], **kw: object) -> CircuitBreaker:
    return CircuitBreaker("openai", clock=clock, on_transition=events.append, worker="w1", **kw)  # type: ignore[arg-type]


def test_opens_after_five_consecutive_failures_only() -> None:
    clock, events = FakeClock(), []
    b = breaker(clock, events)
    for _ in range(4):
        assert b.allow()
        b.record_failure("503")
    b.record_success()  # the streak is broken
    for _ in range(4):
        b.record_failure("503")
    assert b.state == "closed" and b.allow()
    b.record_failure("503")
    assert b.state == "open"
    assert not b.allow()
    assert [(e.previous_state, e.state) for e in events] == [("closed", "open")]
    assert events[0].consecutive_failures == 5 and events[0].provider == "openai" and events[0].worker == "w1"


def test_exactly_one_half_open_probe_after_recovery_timeout_then_close() -> None:
    clock, events = FakeClock(), []
    b = breaker(clock, events)
    for _ in range(5):
        b.record_failure()
    clock.advance(59.9)
    assert not b.allow()
    assert b.retry_in() == pytest.approx(0.1)
    clock.advance(0.1)
    grants = [b.allow() for _ in range(10)]
    assert grants == [True] + [False] * 9  # one probe, however many callers ask
    assert b.state == "half_open"
    b.record_success()
    assert b.state == "closed"
    assert all(b.allow() for _ in range(3))
    assert [(e.previous_state, e.state) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_an_open_circuit_reads_half_open_once_its_probe_may_go() -> None:
    # Routing skips providers whose state is "open": after the recovery timeout the state must say
    # otherwise, or the probe is never sent. Reading it publishes nothing; granting the probe does.
    clock, events = FakeClock(), []
    b = breaker(clock, events, recovery_timeout_s=10.0)
    for _ in range(5):
        b.record_failure()
    clock.advance(9.9)
    assert b.state == "open"
    clock.advance(0.1)
    assert b.state == "half_open" and b.state == "half_open"
    assert [e.state for e in events] == ["open"]
    assert b.allow() and not b.allow()
    assert b.state == "half_open" and [e.state for e in events] == ["open", "half_open"]


def test_failed_probe_reopens_for_a_full_recovery_timeout() -> None:
    clock, events = FakeClock(), []
    b = breaker(clock, events, failure_threshold=2, recovery_timeout_s=10.0)
    b.record_failure()
    b.record_failure()
    clock.advance(10)
    assert b.allow()
    b.record_failure("probe 503")
    assert b.state == "open"
    clock.advance(9.99)
    assert not b.allow()
    clock.advance(0.01)
    assert b.allow() and not b.allow()
    assert [e.state for e in events] == ["open", "half_open", "open", "half_open"]


def test_a_lost_probe_frees_its_slot_after_the_probe_timeout() -> None:
    clock = FakeClock()
    b = CircuitBreaker("p", failure_threshold=1, recovery_timeout_s=5, probe_timeout_s=2, clock=clock)
    b.record_failure()
    clock.advance(5)
    assert b.allow()  # probe granted, never reported
    clock.advance(1.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow() and not b.allow()
    b.release()  # no verdict (e.g. rate limited): the slot is free again, still half-open
    assert b.state == "half_open" and b.allow()


def test_record_judges_errors_by_kind() -> None:
    clock = FakeClock()
    b = CircuitBreaker("p", failure_threshold=2, clock=clock)
    b.record(ProviderUnavailable("x"))
    b.record(BadRequest("the provider is up; the request was bad"))
    b.record(ProviderTimeout("x"))
    assert b.state == "closed" and b.consecutive_failures == 1
    b.record(RateLimited("x"))
    b.record(ContentFiltered("x"))
    assert b.consecutive_failures == 0
    b.record(ProviderTimeout("x"))
    b.record(ProviderTimeout("x"))
    assert b.state == "open"


def test_remote_transitions_apply_without_echo() -> None:
    clock, events = FakeClock(), []
    b = breaker(clock, events)
    opened = ProviderHealth(provider="openai", state="open", consecutive_failures=7, worker="w2", ts=clock.wall())
    assert b.apply(opened)
    assert b.state == "open" and not b.allow() and b.consecutive_failures == 7
    assert events == []  # applied, not re-emitted
    # another worker's probe is in flight: we keep holding our calls
    clock.advance(60)
    probing = ProviderHealth(provider="openai", state="half_open", worker="w2", ts=clock.wall())
    b.apply(probing)
    assert b.state == "open" and not b.allow()
    closed = ProviderHealth(provider="openai", state="closed", worker="w2", ts=clock.wall())
    assert b.apply(closed)
    assert b.state == "closed" and b.allow()
    # our own events (echoed back by the topic), other providers' and stale ones are ignored
    assert not b.apply(ProviderHealth(provider="openai", state="open", worker="w1", ts=clock.wall()))
    assert not b.apply(ProviderHealth(provider="anthropic", state="open", worker="w2", ts=clock.wall()))
    stale = ProviderHealth(provider="openai", state="open", worker="w3", ts=clock.wall() - timedelta(seconds=5))
    assert not b.apply(stale)
    assert b.state == "closed"


def test_remote_open_then_local_recovery_probe() -> None:
    clock = FakeClock()
    b = CircuitBreaker("openai", recovery_timeout_s=30, clock=clock, worker="w1")
    b.apply(ProviderHealth(provider="openai", state="open", worker="w2", ts=clock.wall()))
    clock.advance(30)
    assert b.allow() and b.state == "half_open"


def test_board_routes_events_and_emits_local_transitions() -> None:
    clock, events = FakeClock(), []
    board = BreakerBoard(failure_threshold=1, clock=clock, on_transition=events.append, worker="w1")
    board["anthropic"].record_failure("boom")
    assert board.states() == {"anthropic": "open"}
    assert events[0].provider == "anthropic" and events[0].reason and "boom" in events[0].reason
    board.apply(ProviderHealth(provider="anthropic", state="closed", worker="w9", ts=clock.wall()))
    board.apply(ProviderHealth(provider="azure", state="open", worker="w9", ts=clock.wall()))
    assert board.states() == {"anthropic": "closed", "azure": "open"}
    # events survive the wire (what dispatch publishes and other workers consume)
    assert ProviderHealth.from_json(events[0].to_json()) == events[0]
