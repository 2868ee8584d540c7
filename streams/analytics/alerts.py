"""The alert rule engine: pure, clock-injected, fed with windowed aggregates, emits ``Alert``s.

Rules (thresholds in ``AlertRules``):

* ``provider_error_rate``       errors / requests over the window > 5 % (per provider)
* ``provider_p95_latency``      p95 latency over the window > 3 s (per provider)
* ``provider_cost_per_request`` cost / requests over the window > $0.01 (per provider)
* ``provider_unhealthy``        the provider's circuit is open / half-open (health events)
* ``tenant_budget``             spend past 80 % (warning) / 100 % (critical) of the tenant's budget

Lifecycle per (rule, subject), ``alert_id = "<rule>:<subject>"`` (stable across workers):
the condition must hold ``warn_after`` (5 min) before a *warning* fires, and ``critical_after``
(2 min) more before it escalates to *critical*; budget alerts take their severity from the level
crossed and fire at once. Each transition is emitted once (dedup). When the condition clears
(for ``resolve_after``), a *resolved* alert is emitted and a ``cooldown`` starts during which
the same alert cannot fire again. Providers with fewer than ``min_requests`` in the window are
not judged on rates; if such a provider's circuit is open (it gets almost no calls *because* it is
failing: only the half-open probes), its rate alerts keep their last verdict instead of clearing,
so an outage longer than the window does not resolve them while the provider is still down.

``UsageWindow`` turns a stream of ``UsageEvent``/``ProviderHealth`` into the ``Snapshot`` the
engine evaluates; ``snapshot_from_store`` builds one from ClickHouse instead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from schemas.alert import Alert, AlertSeverity
from schemas.base import utc_now
from schemas.health import ProviderHealth
from schemas.usage import UsageEvent

if TYPE_CHECKING:
    from streams.analytics.client import Reader

Clock = Callable[[], datetime]
RATE_RULES = ("provider_error_rate", "provider_cost_per_request", "provider_p95_latency")
_RANK: dict[str | None, int] = {None: 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Escalation:
    """How long a condition must hold to fire and escalate, and how resolution behaves."""

    warn_after: timedelta = timedelta(minutes=5)
    critical_after: timedelta = timedelta(minutes=2)
    resolve_after: timedelta = timedelta(0)
    cooldown: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class AlertRules:
    """Thresholds and escalation; ``escalations`` overrides ``escalation`` per rule name."""

    error_rate: float = 0.05
    p95_latency_ms: float = 3000.0
    cost_per_request_usd: float = 0.01
    budget_warning: float = 0.8
    budget_critical: float = 1.0
    min_requests: int = 20
    escalation: Escalation = Escalation()
    escalations: Mapping[str, Escalation] = field(default_factory=dict)

    def for_rule(self, rule: str) -> Escalation:
        """The escalation policy of one rule."""
        return self.escalations.get(rule, self.escalation)


@dataclass(frozen=True)
class ProviderStats:
    """One provider's aggregates over the evaluation window."""

    provider: str
    requests: int
    errors: int = 0
    p95_latency_ms: float = 0.0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Everything the rules look at, at one instant."""

    providers: Mapping[str, ProviderStats] = field(default_factory=dict)
    unhealthy: Mapping[str, str] = field(default_factory=dict)  # provider -> reason
    spend_usd: Mapping[str, float] = field(default_factory=dict)  # tenant -> spend this budget period
    budgets_usd: Mapping[str, float] = field(default_factory=dict)  # tenant -> budget
    warming: bool = False
    """The window has not yet watched a whole window's worth of traffic (an evaluator just resumed from the
    stream): too few calls is no evidence of recovery for any provider with an active rate alert."""


@dataclass(frozen=True)
class Condition:
    """A rule that currently holds for a subject."""

    rule: str
    subject: str
    value: float
    threshold: float
    message: str
    severity: AlertSeverity | None = None  # fixed severity (budgets); None: escalate by time


@dataclass
class _State:
    since: datetime
    severity: AlertSeverity | None = None
    condition: Condition | None = None
    cleared_since: datetime | None = None


def conditions(snapshot: Snapshot, rules: AlertRules) -> list[Condition]:
    """The rule conditions that hold in ``snapshot``."""
    out: list[Condition] = []
    for name, stats in sorted(snapshot.providers.items()):
        if stats.requests >= rules.min_requests:
            rate = stats.errors / stats.requests
            if rate > rules.error_rate:
                out.append(
                    Condition(
                        "provider_error_rate",
                        name,
                        rate,
                        rules.error_rate,
                        f"{name}: error rate {rate:.1%} over {stats.requests} requests (> {rules.error_rate:.0%})",
                    )
                )
            per_request = stats.cost_usd / stats.requests
            if per_request > rules.cost_per_request_usd:
                out.append(
                    Condition(
                        "provider_cost_per_request",
                        name,
                        per_request,
                        rules.cost_per_request_usd,
                        f"{name}: ${per_request:.4f} per request (> ${rules.cost_per_request_usd:.4f})",
                    )
                )
            if stats.p95_latency_ms > rules.p95_latency_ms:
                out.append(
                    Condition(
                        "provider_p95_latency",
                        name,
                        stats.p95_latency_ms,
                        rules.p95_latency_ms,
                        f"{name}: p95 latency {stats.p95_latency_ms / 1000:.2f} s "
                        f"(> {rules.p95_latency_ms / 1000:.2f} s)",
                    )
                )
    for name, reason in sorted(snapshot.unhealthy.items()):
        out.append(Condition("provider_unhealthy", name, 1.0, 0.0, f"{name}: failing health checks ({reason})"))
    for tenant, budget in sorted(snapshot.budgets_usd.items()):
        if budget <= 0:
            continue
        ratio = snapshot.spend_usd.get(tenant, 0.0) / budget
        for level, severity in ((rules.budget_critical, "critical"), (rules.budget_warning, "warning")):
            if ratio >= level:
                out.append(
                    Condition(
                        "tenant_budget",
                        tenant,
                        ratio,
                        level,
                        f"tenant {tenant}: {ratio:.0%} of its ${budget:,.2f} budget spent (>= {level:.0%})",
                        severity=severity,  # type: ignore[arg-type]
                    )
                )
                break
    return out


def undetermined(snapshot: Snapshot, rules: AlertRules, held: Iterable[tuple[str, str]] = ()) -> set[tuple[str, str]]:
    """(rule, provider) rate checks that cannot be judged now and must keep their last verdict.

    A provider whose circuit is open gets no calls but its half-open probes, so its window soon
    holds fewer than ``min_requests``: too few to judge, and not evidence of recovery either. The
    same holds, while the snapshot is ``warming``, for every provider with a ``held`` rate alert: a
    restarted evaluator's window starts empty.
    """
    out: set[tuple[str, str]] = set()
    names = set(snapshot.unhealthy)
    if snapshot.warming:
        names |= {subject for rule, subject in held if rule in RATE_RULES}
    for name in names:
        stats = snapshot.providers.get(name)
        if stats is None or stats.requests < rules.min_requests:
            out.update((rule, name) for rule in RATE_RULES)
    return out


class AlertEngine:
    """Evaluates snapshots and emits alert state changes. Not thread-safe; one per alerting agent."""

    def __init__(self, rules: AlertRules | None = None, *, clock: Clock = utc_now) -> None:
        self.rules = rules or AlertRules()
        self.clock = clock
        self._states: dict[tuple[str, str], _State] = {}
        self._cooldown_until: dict[tuple[str, str], datetime] = {}

    @property
    def firing(self) -> dict[str, AlertSeverity]:
        """alert_id -> severity of every alert currently firing."""
        return {f"{r}:{s}": st.severity for (r, s), st in self._states.items() if st.severity is not None}

    def restore(self, last: Iterable[Alert]) -> int:
        """Resume from each alert's last stored transition (after a restart or a change of leader).

        A firing alert is firing again, with its severity and start, so it is neither fired twice nor
        left unresolved when its condition has cleared meanwhile: the next ``evaluate`` resolves it. A
        resolution still inside its cooldown keeps the alert from re-firing until the cooldown ends.
        Alerts this engine already tracks keep their state. Returns how many alerts were restored.
        """
        now = self.clock()
        restored = 0
        for alert in last:
            key = (alert.rule, alert.subject)
            if key in self._states:
                continue
            if alert.status == "firing":
                fixed = alert.severity if alert.rule == "tenant_budget" else None
                cond = Condition(alert.rule, alert.subject, alert.value, alert.threshold, alert.message, severity=fixed)
                self._states[key] = _State(since=alert.started_at, severity=alert.severity, condition=cond)
                restored += 1
            else:
                until = alert.ts + self.rules.for_rule(alert.rule).cooldown
                if until > now:
                    self._cooldown_until[key] = until
                    restored += 1
        return restored

    def evaluate(self, snapshot: Snapshot) -> list[Alert]:
        """Apply one snapshot at ``clock()``; return the transitions (fired, escalated, resolved)."""
        now = self.clock()
        emitted: list[Alert] = []
        active = {(c.rule, c.subject): c for c in conditions(snapshot, self.rules)}
        for key in undetermined(snapshot, self.rules, self._states):
            held = self._states.get(key)
            if key not in active and held is not None and held.condition is not None:
                active[key] = held.condition  # too few calls to judge while the circuit is open
        for key, cond in active.items():
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _State(since=now)
            state.condition = cond
            state.cleared_since = None
            target = self._target(key, state, cond, now)
            if _RANK[target] > _RANK[state.severity]:
                state.severity = target
                emitted.append(self._alert(key, state, cond, "firing", now))
        for key in [k for k in self._states if k not in active]:
            state = self._states[key]
            if state.severity is None:
                del self._states[key]  # pending only: never fired, nothing to resolve
                continue
            esc = self.rules.for_rule(key[0])
            state.cleared_since = state.cleared_since or now
            if now - state.cleared_since >= esc.resolve_after:
                assert state.condition is not None
                emitted.append(self._alert(key, state, state.condition, "resolved", now))
                self._cooldown_until[key] = now + esc.cooldown
                del self._states[key]
        return emitted

    def _target(self, key: tuple[str, str], state: _State, cond: Condition, now: datetime) -> AlertSeverity | None:
        if state.severity is None and now < self._cooldown_until.get(key, now):
            return None  # cooling down after a resolution: do not re-fire yet
        if cond.severity is not None:
            return cond.severity
        esc = self.rules.for_rule(cond.rule)
        held = now - state.since
        if held >= esc.warn_after + esc.critical_after:
            return "critical"
        if held >= esc.warn_after:
            return "warning"
        return None

    def _alert(
        self, key: tuple[str, str], state: _State, cond: Condition, status: Literal["firing", "resolved"], now: datetime
    ) -> Alert:
        assert state.severity is not None
        message = cond.message if status == "firing" else f"resolved: {cond.message}"
        return Alert(
            alert_id=f"{key[0]}:{key[1]}",
            rule=key[0],
            subject=key[1],
            severity=state.severity,
            status=status,
            value=float(cond.value),
            threshold=float(cond.threshold),
            message=message,
            started_at=state.since,
            ts=now,
        )


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


class UsageWindow:
    """Sliding-window aggregates over usage and health events, deduplicated by event_id."""

    def __init__(self, window: timedelta = timedelta(minutes=5), *, clock: Clock = utc_now) -> None:
        self.window = window
        self.clock = clock
        self._events: deque[UsageEvent] = deque()
        self._seen: set[str] = set()
        self._health: dict[str, ProviderHealth] = {}

    def add(self, event: UsageEvent) -> None:
        """Count one usage event (a replay of one still in the window, or one older than the window, is ignored)."""
        if event.event_id in self._seen or event.ts < self.clock() - self.window:
            return  # a replay, or an event already outside the window (a partition catching up)
        self._seen.add(event.event_id)
        self._events.append(event)

    def add_all(self, events: Iterable[UsageEvent]) -> None:
        """Count each of ``events`` (see ``add``)."""
        for event in events:
            self.add(event)

    def add_health(self, event: ProviderHealth) -> None:
        """Track a provider's latest circuit state."""
        current = self._health.get(event.provider)
        if current is None or event.ts >= current.ts:
            self._health[event.provider] = event

    def _prune(self, horizon: datetime) -> None:
        """Drop every event older than ``horizon``, wherever it sits (events arrive out of order)."""
        if all(e.ts >= horizon for e in self._events):
            return
        kept: deque[UsageEvent] = deque()
        for e in self._events:
            if e.ts >= horizon:
                kept.append(e)
            else:
                self._seen.discard(e.event_id)
        self._events = kept

    def snapshot(
        self,
        *,
        spend_usd: Mapping[str, float] | None = None,
        budgets_usd: Mapping[str, float] | None = None,
        warming: bool = False,
    ) -> Snapshot:
        """The aggregates of the events whose ``ts`` lies in the last ``window``, in any arrival order.

        Cache hits are left out: they carry the name of the provider whose answer was cached, but
        that provider was not called, so they say nothing about its errors, latency or cost. So are
        ``rejected`` events (a request that ended without any call).
        """
        horizon = self.clock() - self.window
        self._prune(horizon)
        requests: dict[str, int] = {}
        errors: dict[str, int] = {}
        cost: dict[str, float] = {}
        latency: dict[str, list[float]] = {}
        for e in self._events:
            if e.status in ("cached", "rejected") or e.ts < horizon:
                continue
            requests[e.provider] = requests.get(e.provider, 0) + 1
            errors[e.provider] = errors.get(e.provider, 0) + (e.status == "error")
            cost[e.provider] = cost.get(e.provider, 0.0) + e.cost_usd
            latency.setdefault(e.provider, []).append(e.latency_ms)
        providers = {p: ProviderStats(p, n, errors[p], _p95(latency[p]), cost[p]) for p, n in requests.items()}
        return Snapshot(providers, self.unhealthy(), dict(spend_usd or {}), dict(budgets_usd or {}), warming)

    def unhealthy(self) -> dict[str, str]:
        """provider -> reason, for every provider whose latest circuit state is open or half-open."""
        failing = ("open", "half_open")
        return {p: h.reason or f"circuit {h.state}" for p, h in self._health.items() if h.state in failing}


def _finite(value: Any) -> float:
    """A float for the rules: NULL (a NaN through the query endpoint's JSON), NaN or inf become 0."""
    if value is None:
        return 0.0
    number = float(value)
    return number if math.isfinite(number) else 0.0


def snapshot_from_store(
    reader: Reader,
    *,
    now: datetime,
    window: timedelta = timedelta(minutes=5),
    spend_usd: Mapping[str, float] | None = None,
    budgets_usd: Mapping[str, float] | None = None,
    unhealthy: Mapping[str, str] | None = None,
    database: str = "aifleet",
) -> Snapshot:
    """A snapshot whose provider stats are computed in ClickHouse (deduplicated, every process's events).

    Like ``UsageWindow.snapshot``, cache hits are left out of every provider figure.
    """
    from streams.analytics.reports import provider_window

    rows = provider_window(reader, now - window, now, database=database)
    providers = {
        str(r["provider"]): ProviderStats(
            str(r["provider"]), int(r["requests"]), int(r["errors"]), _finite(r["p95_ms"]), _finite(r["cost_usd"])
        )
        for r in rows
        if int(r["requests"]) > 0
    }
    return Snapshot(providers, dict(unhealthy or {}), dict(spend_usd or {}), dict(budgets_usd or {}))


__all__ = [
    "AlertEngine",
    "AlertRules",
    "Condition",
    "Escalation",
    "ProviderStats",
    "Snapshot",
    "UsageWindow",
    "conditions",
    "snapshot_from_store",
    "undetermined",
]
