"""Per-tenant daily request quotas and monthly USD budgets, as pure logic over a plain dict.

``QuotaLedger`` keeps one record per tenant in ``state`` (any ``MutableMapping[str, dict]``: a dict in
tests, a Faust table in the gate). The table is partitioned by tenant and requests are keyed by
tenant, so each tenant's record has exactly one writer and counts are exact across workers. Every
change writes a fresh dict back to ``state[tenant]`` (never mutates in place), which is what a Faust
table needs to log the change.

- ``admit(tenant, tier, now, estimated_cost, request_id=...)`` counts the request against its UTC
  day and reserves its estimated cost against the month's budget, or raises ``QuotaExceeded``
  (``resets_at``: next 00:00 UTC) / ``BudgetExceeded`` (``resets_at``: the 1st of next month,
  00:00 UTC). A request is admitted when ``spent + reserved + estimate <= budget``. Admitting the same
  ``request_id`` twice (a replayed record) counts it once, also when its usage has settled in between.
- ``settle(tenant, actual_cost, now, reservation_id=..., event_id=...)`` adds what a call really cost
  and releases that request's reservation (on its first settlement). ``event_id`` makes a replayed
  usage event a no-op. ``settle_usage(UsageEvent)`` does both from a usage event. A late event (stamped
  before the record's day or month) never rolls the record back; a cost from a month that has ended
  releases its hold but is not charged to the new month.

Because every admitted request holds its estimate until it settles, concurrent requests cannot
jointly overshoot the budget; spending stops within one request's cost (the amount by which a
call's actual cost exceeds its estimate). Money is kept in integer nano-USD, so sums are exact.
Unsettled reservations expire after ``routing.reservation_ttl_s``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.usage import UsageEvent
from streams.catalog import Catalog
from streams.errors import BudgetExceeded, QuotaExceeded

NANO = 1_000_000_000
_SEEN_KEPT = 256


def to_nusd(usd: float) -> int:
    """USD as integer nano-USD."""
    return round(usd * NANO)


def next_utc_midnight(now: datetime) -> datetime:
    """When the daily quota of ``now``'s UTC day resets."""
    day = _utc(now).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def month_start(now: datetime) -> datetime:
    """00:00 UTC on the 1st of ``now``'s UTC month: where the monthly budget's spend starts."""
    t = _utc(now)
    return datetime(t.year, t.month, 1, tzinfo=UTC)


def next_month_start(now: datetime) -> datetime:
    """When the monthly budget of ``now``'s UTC month resets."""
    t = _utc(now)
    return datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _settled(rec: dict[str, Any], request_id: str) -> bool:
    """Whether a usage event of ``request_id`` (ids ``<request_id>:<attempt>``) settled recently.

    Request ids may hold ``:`` themselves, so the attempt is what follows the last one (a prefix test would
    take request ``job`` for settled once ``job:1``'s event ``job:1:1`` has been)."""
    return any(e.rpartition(":")[0] == request_id for e in rec["seen"])


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: its reservation and where the tenant stands after it."""

    tenant: str
    tier: str
    reservation_id: str
    reserved_usd: float
    requests_today: int
    requests_limit: int | None
    spent_usd: float
    outstanding_usd: float
    budget_usd: float | None

    @property
    def remaining_requests(self) -> int | None:
        """Requests left today (None: unlimited)."""
        return None if self.requests_limit is None else max(0, self.requests_limit - self.requests_today)

    @property
    def remaining_budget_usd(self) -> float | None:
        """Budget neither spent nor reserved (None: unlimited)."""
        return None if self.budget_usd is None else self.budget_usd - self.spent_usd - self.outstanding_usd


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of one ``settle``: what was released and added (nothing for a replayed event)."""

    applied: bool
    released_usd: float
    charged_usd: float
    spent_usd: float


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's standing in the current day and month."""

    tenant: str
    day: str
    requests_today: int
    month: str
    spent_usd: float
    outstanding_usd: float


class QuotaLedger:
    """Daily request quotas and monthly budgets per tenant, over a plain ``state`` mapping."""

    def __init__(self, catalog: Catalog, state: MutableMapping[str, Any] | None = None) -> None:
        self._catalog = catalog
        self.state: MutableMapping[str, Any] = state if state is not None else {}

    # -- limits ------------------------------------------------------------------------------------
    def daily_limit(self, tenant: str, tier: str) -> int | None:
        """Requests per UTC day for this tenant (its own override, else its tier's; None: unlimited)."""
        spec = self._catalog.tenants.get(tenant)
        if spec is not None and spec.requests_per_day is not None:
            return spec.requests_per_day
        return self._catalog.tier(tier).requests_per_day

    def monthly_budget(self, tenant: str, tier: str) -> float | None:
        """USD per calendar month for this tenant (its own, else its tier's default; None: unlimited)."""
        return self._catalog.monthly_budget_of(tenant, tier)

    # -- records -----------------------------------------------------------------------------------
    def _record(self, tenant: str, now: datetime) -> dict[str, Any]:
        """A fresh copy of the tenant's record, rolled over to ``now``'s day and month, expired holds dropped.

        Periods only move forward: a ``now`` before the record's day or month (a usage event stamped before
        midnight and settled after the new day's first request) keeps the record's period and counts.
        """
        t = _utc(now)
        old = self.state.get(tenant) or {}
        day = max(t.strftime("%Y-%m-%d"), old.get("day", ""))
        month = max(t.strftime("%Y-%m"), old.get("month", ""))
        rec: dict[str, Any] = {
            "day": day,
            "requests": old.get("requests", 0) if old.get("day") == day else 0,
            "month": month,
            "spent_nusd": old.get("spent_nusd", 0) if old.get("month") == month else 0,
            "reservations": dict(old.get("reservations", {})) if old.get("month") == month else {},
            "seen": list(old.get("seen", [])),
            "applied": dict(old.get("applied", {})),
            "seq": old.get("seq", 0),
        }
        horizon = t.timestamp() - self._catalog.routing.reservation_ttl_s
        rec["reservations"] = {k: v for k, v in rec["reservations"].items() if v["at"] >= horizon}
        return rec

    @staticmethod
    def _outstanding(rec: dict[str, Any]) -> int:
        return sum(v["nusd"] for v in rec["reservations"].values())

    def usage(self, tenant: str, now: datetime) -> TenantUsage:
        """Where ``tenant`` stands at ``now`` (nothing is written)."""
        rec = self._record(tenant, now)
        return TenantUsage(
            tenant=tenant,
            day=rec["day"],
            requests_today=rec["requests"],
            month=rec["month"],
            spent_usd=rec["spent_nusd"] / NANO,
            outstanding_usd=self._outstanding(rec) / NANO,
        )

    # -- admission and settlement ------------------------------------------------------------------
    def admit(
        self, tenant: str, tier: str, now: datetime, estimated_cost: float, *, request_id: str | None = None
    ) -> Admission:
        """Count one request and reserve its estimated cost, or raise QuotaExceeded / BudgetExceeded."""
        limit = self.daily_limit(tenant, tier)
        budget = self.monthly_budget(tenant, tier)
        if limit is None and budget is None:
            # Nothing to enforce: keep no state (no table write, no changelog record on the hot path).
            return Admission(
                tenant=tenant,
                tier=tier,
                reservation_id=request_id or "",
                reserved_usd=0.0,
                requests_today=0,
                requests_limit=None,
                spent_usd=0.0,
                outstanding_usd=0.0,
                budget_usd=None,
            )
        rec = self._record(tenant, now)
        estimate = max(0, to_nusd(estimated_cost))
        outstanding = self._outstanding(rec)

        if request_id is not None and request_id in rec["reservations"]:
            held = rec["reservations"][request_id]["nusd"]
            return self._admission(tenant, tier, request_id, held, rec, limit, budget, outstanding)
        if request_id is not None and _settled(rec, request_id):
            # replayed after its usage settled: already counted, and a new hold would never be released
            return self._admission(tenant, tier, request_id, 0, rec, limit, budget, outstanding)

        if limit is not None and rec["requests"] >= limit:
            resets = next_utc_midnight(now)
            raise QuotaExceeded(
                f"tenant {tenant!r} used all {limit} requests of tier {tier} for {rec['day']} (UTC); "
                f"the quota resets at {resets.isoformat()}",
                resets_at=resets,
                retry_after_s=(resets - _utc(now)).total_seconds(),
            )
        if budget is not None and rec["spent_nusd"] + outstanding + estimate > to_nusd(budget):
            resets = next_month_start(now)
            raise BudgetExceeded(
                f"tenant {tenant!r} would pass its ${budget:,.2f} budget for {rec['month']}: "
                f"${rec['spent_nusd'] / NANO:,.6f} spent, ${outstanding / NANO:,.6f} reserved, "
                f"${estimate / NANO:,.6f} estimated for this request; the budget resets at {resets.isoformat()}",
                resets_at=resets,
                retry_after_s=(resets - _utc(now)).total_seconds(),
            )

        rec["seq"] += 1
        rid = request_id if request_id is not None else f"#{rec['seq']}"
        rec["requests"] += 1
        rec["reservations"][rid] = {"nusd": estimate, "at": _utc(now).timestamp()}
        self.state[tenant] = rec
        return self._admission(tenant, tier, rid, estimate, rec, limit, budget, outstanding + estimate)

    @staticmethod
    def _admission(
        tenant: str,
        tier: str,
        rid: str,
        held: int,
        rec: dict[str, Any],
        limit: int | None,
        budget: float | None,
        outstanding: int,
    ) -> Admission:
        return Admission(
            tenant=tenant,
            tier=tier,
            reservation_id=rid,
            reserved_usd=held / NANO,
            requests_today=rec["requests"],
            requests_limit=limit,
            spent_usd=rec["spent_nusd"] / NANO,
            outstanding_usd=outstanding / NANO,
            budget_usd=budget,
        )

    def settle(
        self,
        tenant: str,
        actual_cost: float,
        now: datetime,
        *,
        reservation_id: str | None = None,
        event_id: str | None = None,
        position: tuple[int, int] | None = None,
    ) -> Settlement:
        """Charge what a call cost and release the request's reservation (a replayed ``event_id``: no-op).

        ``position`` is the usage record's (partition, offset): the settle agent reads each partition in
        order, so a record at or below the last one applied from its partition is a replay, however many
        records the replay spans (the ``seen`` ids only cover the last ``_SEEN_KEPT``).
        """
        rec = self._record(tenant, now)
        unchanged = Settlement(applied=False, released_usd=0.0, charged_usd=0.0, spent_usd=rec["spent_nusd"] / NANO)
        if position is not None:
            partition, offset = str(position[0]), position[1]
            if offset <= rec["applied"].get(partition, -1):
                return unchanged
            rec["applied"][partition] = offset
        if event_id is not None and event_id in rec["seen"]:
            if position is not None:
                self.state[tenant] = rec  # the mark moves past a duplicate too
            return unchanged
        held = rec["reservations"].pop(reservation_id, None) if reservation_id is not None else None
        released = held["nusd"] if held else 0
        # a cost from a month that has ended belongs to that month's budget, not to the current one
        charged = max(0, to_nusd(actual_cost)) if _utc(now).strftime("%Y-%m") == rec["month"] else 0
        rec["spent_nusd"] += charged
        if event_id is not None:
            rec["seen"] = [*rec["seen"], event_id][-_SEEN_KEPT:]
        self.state[tenant] = rec
        return Settlement(
            applied=True, released_usd=released / NANO, charged_usd=charged / NANO, spent_usd=rec["spent_nusd"] / NANO
        )

    def settle_usage(self, event: UsageEvent, position: tuple[int, int] | None = None) -> Settlement:
        """``settle`` from a usage event: its cost, its request's reservation, its event id (and its record's
        ``position``: partition and offset)."""
        if event.tenant not in self.state and self.monthly_budget(event.tenant, event.tier or "pro") is None:
            # an unlimited tenant that was never admitted with state: nothing reserved, nothing to track
            return Settlement(applied=False, released_usd=0.0, charged_usd=0.0, spent_usd=0.0)
        return self.settle(
            event.tenant,
            event.cost_usd,
            event.ts,
            reservation_id=event.request_id,
            event_id=event.event_id,
            position=position,
        )
