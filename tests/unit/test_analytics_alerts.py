"""The alert rule engine: escalation, dedup, resolution, cool-down, windows (injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.alert import Alert
from schemas.health import ProviderHealth
from schemas.usage import UsageEvent
from streams.analytics.alerts import (
    AlertEngine,
    AlertRules,
    Escalation,
    ProviderStats,
    Snapshot,
    UsageWindow,
    conditions,
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def failing(rate: float = 0.10, requests: int = 100) -> Snapshot:
    return Snapshot(providers={"openai": ProviderStats("openai", requests, int(requests * rate))})


HEALTHY = Snapshot(providers={"openai": ProviderStats("openai", 100, 1)})


def test_error_rate_escalates_warning_then_critical_then_resolves() -> None:
    clock = Clock()
    engine = AlertEngine(clock=clock)
    assert engine.evaluate(failing()) == []  # condition starts: pending, nothing yet
    clock.advance(minutes=4, seconds=59)
    assert engine.evaluate(failing()) == []
    clock.advance(seconds=1)  # held 5 minutes
    [warning] = engine.evaluate(failing())
    assert (warning.rule, warning.subject, warning.severity, warning.status) == (
        "provider_error_rate",
        "openai",
        "warning",
        "firing",
    )
    assert warning.alert_id == "provider_error_rate:openai"
    assert warning.started_at == T0 and warning.ts == clock.now
    assert warning.value == 0.10 and warning.threshold == 0.05
    clock.advance(minutes=1)
    assert engine.evaluate(failing()) == []  # dedup: still warning, nothing new
    clock.advance(minutes=1)  # 5 + 2 minutes
    [critical] = engine.evaluate(failing())
    assert critical.severity == "critical" and critical.status == "firing" and critical.started_at == T0
    clock.advance(minutes=3)
    assert engine.evaluate(failing()) == []
    assert engine.firing == {"provider_error_rate:openai": "critical"}
    clock.advance(minutes=1)
    [resolved] = engine.evaluate(HEALTHY)
    assert resolved.status == "resolved" and resolved.severity == "critical"
    assert resolved.alert_id == critical.alert_id and resolved.message.startswith("resolved:")
    assert engine.firing == {}
    assert engine.evaluate(HEALTHY) == []


def test_flapping_condition_never_fires_and_pending_resets() -> None:
    clock = Clock()
    engine = AlertEngine(clock=clock)
    for _ in range(10):
        assert engine.evaluate(failing()) == []
        clock.advance(minutes=3)
        assert engine.evaluate(HEALTHY) == []  # cleared before 5 min: the clock restarts
        clock.advance(minutes=1)


def test_cooldown_blocks_refire_then_allows_it() -> None:
    clock = Clock()
    rules = AlertRules(escalation=Escalation(warn_after=timedelta(minutes=1), cooldown=timedelta(minutes=10)))
    engine = AlertEngine(rules, clock=clock)
    engine.evaluate(failing())
    clock.advance(minutes=1)
    assert [a.status for a in engine.evaluate(failing())] == ["firing"]
    clock.advance(minutes=1)
    assert [a.status for a in engine.evaluate(HEALTHY)] == ["resolved"]
    clock.advance(minutes=1)
    engine.evaluate(failing())
    clock.advance(minutes=5)  # holds long enough, but inside the cool-down
    assert engine.evaluate(failing()) == []
    clock.advance(minutes=4)  # cool-down over (10 min after resolution)
    [again] = engine.evaluate(failing())
    assert again.status == "firing" and again.severity == "critical"  # it has held > 1 + 2 minutes
    assert again.started_at == T0 + timedelta(minutes=3)


def test_resolve_after_requires_the_clear_to_hold() -> None:
    clock = Clock()
    rules = AlertRules(
        escalation=Escalation(
            warn_after=timedelta(0), critical_after=timedelta(hours=1), resolve_after=timedelta(minutes=2)
        )
    )
    engine = AlertEngine(rules, clock=clock)
    assert [a.severity for a in engine.evaluate(failing())] == ["warning"]
    clock.advance(minutes=1)
    assert engine.evaluate(HEALTHY) == []  # clear starts
    clock.advance(minutes=1)
    assert engine.evaluate(failing()) == []  # back before 2 min: no resolution, no re-fire (dedup)
    clock.advance(minutes=1)
    assert engine.evaluate(HEALTHY) == []  # clear restarts
    clock.advance(minutes=1)
    assert engine.evaluate(HEALTHY) == []
    clock.advance(minutes=1)
    assert [a.status for a in engine.evaluate(HEALTHY)] == ["resolved"]


def test_latency_cost_and_health_rules() -> None:
    snap = Snapshot(
        providers={
            "slow": ProviderStats("slow", 50, 0, p95_latency_ms=3500.0, cost_usd=0.1),
            "dear": ProviderStats("dear", 50, 0, p95_latency_ms=100.0, cost_usd=0.75),
            "quiet": ProviderStats("quiet", 5, 5, p95_latency_ms=9000.0, cost_usd=5.0),  # under min_requests
        },
        unhealthy={"azure_openai": "circuit open"},
    )
    found = {(c.rule, c.subject) for c in conditions(snap, AlertRules())}
    assert found == {
        ("provider_p95_latency", "slow"),
        ("provider_cost_per_request", "dear"),
        ("provider_unhealthy", "azure_openai"),
    }


def test_budget_levels_fire_at_once_with_their_severity() -> None:
    clock = Clock()
    engine = AlertEngine(clock=clock)
    budgets = {"acme": 100.0, "zeta": 50.0}
    assert engine.evaluate(Snapshot(spend_usd={"acme": 79.0}, budgets_usd=budgets)) == []
    [warn] = engine.evaluate(Snapshot(spend_usd={"acme": 80.0}, budgets_usd=budgets))
    assert (warn.rule, warn.subject, warn.severity, warn.threshold) == ("tenant_budget", "acme", "warning", 0.8)
    assert engine.evaluate(Snapshot(spend_usd={"acme": 90.0}, budgets_usd=budgets)) == []
    [crit] = engine.evaluate(Snapshot(spend_usd={"acme": 101.0}, budgets_usd=budgets))
    assert crit.severity == "critical" and crit.threshold == 1.0
    clock.advance(days=1)  # a new budget period: spend back to zero
    [resolved] = engine.evaluate(Snapshot(spend_usd={}, budgets_usd=budgets))
    assert resolved.status == "resolved"


def test_usage_window_aggregates_dedups_and_slides() -> None:
    clock = Clock()
    window = UsageWindow(timedelta(minutes=5), clock=clock)
    for i in range(40):
        event = UsageEvent(
            event_id=f"r{i}:1",
            request_id=f"r{i}",
            tenant="acme",
            provider="openai",
            model="gpt-4o",
            status="error" if i < 4 else "ok",
            cost_usd=0.02,
            latency_ms=float(i * 100),
            ts=T0 - timedelta(minutes=6) + timedelta(seconds=i * 15),  # 10 s to 6 min ago... and into now
        )
        window.add(event)
        window.add(event)  # a replay is ignored
    window.add_health(ProviderHealth(provider="anthropic", state="open", reason="5 failures", ts=T0))
    snap = window.snapshot(spend_usd={"acme": 1.0}, budgets_usd={"acme": 2.0})
    stats = snap.providers["openai"]
    # events 0..3 (errors) are older than 5 minutes and slid out; 36 remain (i = 4..39)
    assert stats.requests == 36 and stats.errors == 0
    assert abs(stats.cost_usd - 0.72) < 1e-9
    assert stats.p95_latency_ms == 3800.0  # nearest-rank p95 of 400..3900
    assert snap.unhealthy == {"anthropic": "5 failures"}
    window.add_health(ProviderHealth(provider="anthropic", state="closed", ts=T0 + timedelta(seconds=1)))
    assert window.snapshot().unhealthy == {}
    # $0.02 per request and a 3.8 s p95 break their rules: conditions now, alerts only after 5 minutes.
    assert {c.rule for c in conditions(snap, AlertRules())} == {
        "provider_cost_per_request",
        "provider_p95_latency",
        "provider_unhealthy",
    }
    assert AlertEngine(clock=clock).evaluate(snap) == []


def test_rate_alert_holds_while_the_circuit_is_open_and_few_calls_reach_the_provider() -> None:
    # an open circuit lets only its probes through: too few calls to judge a rate, and no sign of recovery
    clock = Clock()
    rules = AlertRules(escalation=Escalation(warn_after=timedelta(minutes=1), critical_after=timedelta(minutes=1)))
    engine = AlertEngine(rules, clock=clock)
    open_circuit = {"openai": "circuit open"}
    assert engine.evaluate(failing(rate=1.0, requests=30)) == []
    clock.advance(minutes=1)
    assert [a.severity for a in engine.evaluate(failing(rate=1.0, requests=30))] == ["warning"]
    clock.advance(minutes=1)
    probes_only = Snapshot(providers={"openai": ProviderStats("openai", 2, 2)}, unhealthy=open_circuit)
    [critical] = [a for a in engine.evaluate(probes_only) if a.rule == "provider_error_rate"]
    assert critical.severity == "critical" and critical.status == "firing" and critical.value == 1.0
    clock.advance(minutes=10)
    no_calls = Snapshot(unhealthy=open_circuit)  # not even a probe in the window
    assert [a for a in engine.evaluate(no_calls) if a.rule == "provider_error_rate"] == []
    assert engine.firing["provider_error_rate:openai"] == "critical"
    clock.advance(minutes=1)
    recovered = Snapshot(providers={"openai": ProviderStats("openai", 2, 0)})  # circuit closed, few calls yet
    [resolved] = [a for a in engine.evaluate(recovered) if a.rule == "provider_error_rate"]
    assert resolved.status == "resolved"


def test_few_calls_on_a_closed_circuit_still_clear_a_rate_alert() -> None:
    clock = Clock()
    rules = AlertRules(escalation=Escalation(warn_after=timedelta(0)))
    engine = AlertEngine(rules, clock=clock)
    assert [a.status for a in engine.evaluate(failing())] == ["firing"]
    clock.advance(minutes=1)
    quiet = Snapshot(providers={"openai": ProviderStats("openai", 3, 3)})  # under min_requests, circuit closed
    assert [a.status for a in engine.evaluate(quiet)] == ["resolved"]
    clock.advance(minutes=1)
    # an open circuit with no calls invents no rate alert where there was none: only its health alert fires
    assert {a.rule for a in engine.evaluate(Snapshot(unhealthy={"azure": "circuit open"}))} == {"provider_unhealthy"}


def stored(rule: str, subject: str, severity: str, status: str, *, started: datetime, at: datetime) -> Alert:
    """A transition as the alerts table returns it."""
    return Alert(
        alert_id=f"{rule}:{subject}",
        rule=rule,
        subject=subject,
        severity=severity,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        value=0.10,
        threshold=0.05,
        message=f"{subject}: error rate 10.0% over 100 requests (> 5%)",
        started_at=started,
        ts=at,
    )


def test_restore_resumes_a_firing_alert_without_refiring_and_escalates_on_its_schedule() -> None:
    clock = Clock(T0 + timedelta(minutes=6))
    engine = AlertEngine(clock=clock)
    last = stored("provider_error_rate", "openai", "warning", "firing", started=T0, at=T0 + timedelta(minutes=5))
    assert engine.restore([last]) == 1
    assert engine.firing == {"provider_error_rate:openai": "warning"}
    assert engine.evaluate(failing()) == []  # still a warning: not fired a second time
    clock.advance(minutes=1)  # 7 minutes since the condition began, before the restart
    [critical] = engine.evaluate(failing())
    assert (critical.severity, critical.status, critical.started_at) == ("critical", "firing", T0)


def test_restore_resolves_an_alert_whose_condition_cleared_while_the_process_was_down() -> None:
    clock = Clock(T0 + timedelta(minutes=20))
    engine = AlertEngine(clock=clock)
    last = stored("provider_error_rate", "openai", "critical", "firing", started=T0, at=T0 + timedelta(minutes=7))
    engine.restore([last])
    [resolved] = engine.evaluate(HEALTHY)
    assert (resolved.alert_id, resolved.severity, resolved.status) == (
        "provider_error_rate:openai",
        "critical",
        "resolved",
    )
    assert resolved.started_at == T0 and resolved.message == f"resolved: {last.message}"
    assert engine.firing == {} and engine.evaluate(HEALTHY) == []


def test_restore_keeps_a_recent_resolution_cooling_down_and_ignores_old_ones() -> None:
    clock = Clock(T0 + timedelta(minutes=25))
    engine = AlertEngine(clock=clock)  # cooldown 10 minutes
    recent = stored("tenant_budget", "acme", "warning", "resolved", started=T0, at=T0 + timedelta(minutes=20))
    old = stored("tenant_budget", "globex", "warning", "resolved", started=T0, at=T0 - timedelta(hours=1))
    assert engine.restore([recent, old]) == 1
    over = Snapshot(spend_usd={"acme": 90.0, "globex": 90.0}, budgets_usd={"acme": 100.0, "globex": 100.0})
    [globex] = engine.evaluate(over)  # budget alerts fire at once, unless cooling down
    assert globex.subject == "globex"
    clock.advance(minutes=5)  # acme's cooldown ends 10 minutes after its resolution
    [acme] = engine.evaluate(over)
    assert (acme.subject, acme.severity, acme.status) == ("acme", "warning", "firing")


def test_restore_leaves_alerts_the_engine_already_tracks() -> None:
    clock = Clock()
    engine = AlertEngine(AlertRules(escalation=Escalation(warn_after=timedelta(0))), clock=clock)
    [fired] = engine.evaluate(failing())
    assert fired.severity == "warning"
    stale = stored("provider_error_rate", "openai", "critical", "resolved", started=T0, at=T0)
    assert engine.restore([stale]) == 0
    assert engine.firing == {"provider_error_rate:openai": "warning"}


def usage(i: int, status: str, ts: datetime, *, cost: float = 0.0, provider: str = "openai") -> UsageEvent:
    cached = status == "cached"
    return UsageEvent(
        event_id=f"r{i}:cache" if cached else f"r{i}:1",
        request_id=f"r{i}",
        tenant="acme",
        provider=provider,
        model="gpt-4o",
        status=status,  # type: ignore[arg-type]
        attempt=0 if cached else 1,
        cost_usd=cost,
        saved_cost_usd=0.02 if cached else 0.0,
        latency_ms=1.0 if cached else 200.0,
        ts=ts,
    )


def test_cache_hits_do_not_dilute_a_providers_rates() -> None:
    clock = Clock()
    window = UsageWindow(timedelta(minutes=5), clock=clock)
    # 20 real calls, 5 failed (25 %), each answered one $0.02; plus 80 cache hits of openai's answers
    window.add_all(usage(i, "error", T0) for i in range(5))
    window.add_all(usage(i, "ok", T0, cost=0.02) for i in range(5, 20))
    window.add_all(usage(i, "cached", T0) for i in range(100, 180))
    window.add_all(usage(i, "rejected", T0) for i in range(200, 240))  # no call made: not the provider's either
    stats = window.snapshot().providers["openai"]
    assert (stats.requests, stats.errors) == (20, 5)
    assert abs(stats.cost_usd - 0.30) < 1e-9
    rules = {c.rule: c.value for c in conditions(window.snapshot(), AlertRules())}
    assert rules["provider_error_rate"] == 0.25
    assert abs(rules["provider_cost_per_request"] - 0.015) < 1e-9


def test_an_error_rate_alert_does_not_resolve_while_only_cache_hits_flow() -> None:
    clock = Clock()
    window = UsageWindow(timedelta(minutes=5), clock=clock)
    engine = AlertEngine(AlertRules(), clock=clock)
    window.add_health(ProviderHealth(provider="openai", state="open", reason="5 failures", ts=T0))
    n = 0
    transitions: list[tuple[str, str, str]] = []
    for minute in range(30):
        for _ in range(30 if minute < 8 else 1):  # failing calls, then one failing probe a minute
            n += 1
            window.add(usage(n, "error", clock.now))
        for _ in range(25):  # the cache keeps answering with openai's earlier answers
            n += 1
            window.add(usage(n, "cached", clock.now))
        transitions += [(a.rule, a.severity, a.status) for a in engine.evaluate(window.snapshot())]
        clock.advance(minutes=1)
    assert ("provider_error_rate", "critical", "firing") in transitions
    assert not [t for t in transitions if t[2] == "resolved"]


def test_a_provider_with_only_cache_hits_in_the_window_is_not_judged() -> None:
    window = UsageWindow(timedelta(minutes=5), clock=Clock())
    window.add_all(usage(i, "cached", T0, provider="anthropic") for i in range(30))
    assert window.snapshot().providers == {}


def test_events_older_than_the_window_are_not_counted_whatever_their_arrival_order() -> None:
    clock = Clock()
    window = UsageWindow(timedelta(minutes=5), clock=clock)
    window.add(usage(0, "ok", T0 - timedelta(seconds=5)))  # a live partition first
    # then a partition still catching up delivers yesterday's incident, and one from 4 minutes ago
    window.add_all(usage(i, "error", T0 - timedelta(days=1)) for i in range(1, 40))
    window.add(usage(40, "error", T0 - timedelta(minutes=4)))
    stats = window.snapshot().providers["openai"]
    assert (stats.requests, stats.errors) == (2, 1)
    assert conditions(window.snapshot(), AlertRules()) == []
    # an event that was inside the window when it arrived slides out once its time has passed
    clock.advance(minutes=2)
    stats = window.snapshot().providers["openai"]
    assert (stats.requests, stats.errors) == (1, 0)
