"""QuotaLedger: daily request quotas, UTC resets, monthly budgets with reservations, replay safety."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from schemas.usage import UsageEvent
from streams.catalog import Catalog, RoutingSpec, TenantSpec, load_catalog
from streams.errors import BudgetExceeded, QuotaExceeded
from streams.routing.quota import QuotaLedger, next_month_start, next_utc_midnight
from streams.settings import DEFAULT_CONFIG_FILE

NOON = datetime(2025, 6, 14, 12, 0, tzinfo=UTC)


@pytest.fixture
def catalog() -> Catalog:
    base = load_catalog(DEFAULT_CONFIG_FILE)
    return base.model_copy(
        update={
            "tenants": {
                **base.tenants,
                "capped": TenantSpec(tier="pro", monthly_budget_usd=1.0),
                "vip": TenantSpec(tier="free", requests_per_day=3),
            }
        }
    )


def test_free_tier_admits_exactly_100_of_150(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    admitted, denied = 0, []
    for i in range(150):
        try:
            ledger.admit("t-free", "free", NOON + timedelta(seconds=i), 0.0, request_id=f"r{i}")
            admitted += 1
        except QuotaExceeded as exc:
            denied.append(exc)
    assert admitted == 100
    assert len(denied) == 50
    assert all(e.resets_at == datetime(2025, 6, 15, tzinfo=UTC) for e in denied)
    info = denied[0].to_info()
    assert info.reason.value == "quota_exceeded" and info.resets_at == datetime(2025, 6, 15, tzinfo=UTC)
    assert denied[0].retry_after_s == pytest.approx(12 * 3600 - 100, abs=1)
    assert ledger.usage("t-free", NOON).requests_today == 100


def test_quota_resets_at_utc_midnight(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    day = datetime(2025, 6, 14, 0, 0, tzinfo=UTC)
    for i in range(100):
        ledger.admit("t", "free", day + timedelta(minutes=i), 0.0)
    with pytest.raises(QuotaExceeded):
        ledger.admit("t", "free", datetime(2025, 6, 14, 23, 59, 59, 999999, tzinfo=UTC), 0.0)
    # 01:30 in UTC+02:00 is still 23:30 UTC of the same day
    with pytest.raises(QuotaExceeded):
        ledger.admit("t", "free", datetime(2025, 6, 15, 1, 30, tzinfo=timezone(timedelta(hours=2))), 0.0)
    admission = ledger.admit("t", "free", datetime(2025, 6, 15, 0, 0, tzinfo=UTC), 0.0)
    assert admission.requests_today == 1 and admission.remaining_requests == 99


def test_tier_quotas_and_tenant_overrides(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    assert ledger.daily_limit("x", "basic") == 1000
    assert ledger.daily_limit("x", "pro") == 10_000
    assert ledger.daily_limit("x", "enterprise") is None
    assert ledger.daily_limit("vip", "free") == 3
    for _ in range(3):
        ledger.admit("vip", "free", NOON, 0.0)
    with pytest.raises(QuotaExceeded):
        ledger.admit("vip", "free", NOON, 0.0)
    for _ in range(2000):  # unlimited
        ledger.admit("big", "enterprise", NOON, 0.0)


def test_budget_stops_spending_within_one_requests_cost(catalog: Catalog) -> None:
    """Eight requests in flight at a time, actual costs up to 50% off their estimates."""
    ledger = QuotaLedger(catalog)
    rng = random.Random(3)
    in_flight: list[tuple[str, float]] = []
    denied: BudgetExceeded | None = None
    max_cost = 0.0
    now = NOON
    for i in range(10_000):
        now += timedelta(seconds=1)
        estimate = rng.uniform(0.001, 0.02)
        try:
            ledger.admit("capped", "pro", now, estimate, request_id=f"r{i}")
            in_flight.append((f"r{i}", estimate))
        except BudgetExceeded as exc:
            denied = exc
        if len(in_flight) >= 8 or denied:
            rid, est = in_flight.pop(0)
            actual = est * rng.uniform(0.5, 1.5)
            max_cost = max(max_cost, actual)
            ledger.settle("capped", actual, now, reservation_id=rid, event_id=f"{rid}:1")
        if denied and not in_flight:
            break
    assert denied is not None
    assert denied.resets_at == datetime(2025, 7, 1, tzinfo=UTC)
    spent = ledger.usage("capped", now).spent_usd
    assert spent > 1.0 - 0.03  # the budget was used ...
    assert spent <= 1.0 + max_cost  # ... and overshot by less than one request's cost
    assert ledger.usage("capped", now).outstanding_usd == 0


def test_reservations_hold_budget_until_settled(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    first = ledger.admit("capped", "pro", NOON, 0.6, request_id="a")
    assert first.reserved_usd == 0.6 and first.remaining_budget_usd == pytest.approx(0.4)
    with pytest.raises(BudgetExceeded, match="reserved"):
        ledger.admit("capped", "pro", NOON, 0.5, request_id="b")  # 0.6 held + 0.5 > 1.0
    settled = ledger.settle("capped", 0.2, NOON, reservation_id="a")
    assert settled.released_usd == 0.6 and settled.charged_usd == 0.2
    assert ledger.admit("capped", "pro", NOON, 0.5, request_id="b").remaining_budget_usd == pytest.approx(0.3)


def test_replays_count_once(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    ledger.admit("capped", "pro", NOON, 0.1, request_id="r1")
    again = ledger.admit("capped", "pro", NOON, 0.1, request_id="r1")
    assert again.requests_today == 1 and again.outstanding_usd == pytest.approx(0.1)
    event = UsageEvent(
        event_id="r1:1",
        request_id="r1",
        tenant="capped",
        provider="openai",
        model="gpt-4o-mini",
        status="ok",
        cost_usd=0.07,
        ts=NOON,
    )
    assert ledger.settle_usage(event).applied
    assert not ledger.settle_usage(event).applied
    # a second attempt of the same request is charged, its reservation was already released
    second = ledger.settle_usage(event.model_copy(update={"event_id": "r1:2", "cost_usd": 0.01}))
    assert second.applied and second.released_usd == 0
    assert ledger.usage("capped", NOON).spent_usd == pytest.approx(0.08)


def test_a_replay_after_its_usage_settled_counts_once_and_holds_nothing(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    ledger.admit("capped", "pro", NOON, 0.1, request_id="r1")
    ledger.settle("capped", 0.1, NOON, reservation_id="r1", event_id="r1:1")
    replay = ledger.admit("capped", "pro", NOON, 0.1, request_id="r1")
    assert replay.reserved_usd == 0 and replay.requests_today == 1
    usage = ledger.usage("capped", NOON)
    assert (usage.requests_today, usage.outstanding_usd, usage.spent_usd) == (1, 0, pytest.approx(0.1))
    # another request id that merely starts alike is a new request
    assert ledger.admit("capped", "pro", NOON, 0.1, request_id="r").requests_today == 2
    # request ids may hold ':': once 'job:1' (event 'job:1:1') has settled, request 'job' is still new
    ledger.admit("capped", "pro", NOON, 0.1, request_id="job:1")
    ledger.settle("capped", 0.1, NOON, reservation_id="job:1", event_id="job:1:1")
    fresh = ledger.admit("capped", "pro", NOON, 0.1, request_id="job")
    assert fresh.requests_today == 4 and fresh.reserved_usd == pytest.approx(0.1)


def test_a_replay_of_more_usage_records_than_the_seen_ids_keep_charges_nothing_twice(catalog: Catalog) -> None:
    """After a crash the settle agent replays every usage record since its last commit; a busy tenant has
    more of them than the 256 event ids a record keeps. Positions (partition, offset) catch them all."""
    ledger = QuotaLedger(catalog)
    events = [
        UsageEvent(
            event_id=f"r{i}:1",
            request_id=f"r{i}",
            tenant="capped",
            provider="openai",
            model="gpt-4o-mini",
            status="ok",
            cost_usd=0.001,
            ts=NOON,
        )
        for i in range(400)
    ]
    for offset, event in enumerate(events):
        ledger.settle_usage(event, position=(2, offset))
    assert ledger.usage("capped", NOON).spent_usd == pytest.approx(0.4)
    assert not any(ledger.settle_usage(e, position=(2, o)).applied for o, e in enumerate(events))  # the replay
    assert ledger.usage("capped", NOON).spent_usd == pytest.approx(0.4)
    # the same event produced twice (at a new offset) is still caught by its id
    assert not ledger.settle_usage(events[-1], position=(2, 400)).applied
    # another partition's offsets are its own
    later = events[0].model_copy(update={"event_id": "x:1", "request_id": "x"})
    assert ledger.settle_usage(later, position=(3, 0)).applied


def test_a_late_usage_event_never_rolls_the_day_back(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    ledger.admit("t", "free", datetime(2025, 3, 1, 23, 59, 59, tzinfo=UTC), 0.0, request_id="late")
    new_day = datetime(2025, 3, 2, 0, 0, 1, tzinfo=UTC)
    for i in range(100):
        ledger.admit("t", "free", new_day, 0.0, request_id=f"r{i}")
    ledger.settle(
        "t", 0.0, datetime(2025, 3, 1, 23, 59, 59, 900000, tzinfo=UTC), reservation_id="late", event_id="late:1"
    )
    assert ledger.usage("t", new_day).requests_today == 100
    with pytest.raises(QuotaExceeded):
        ledger.admit("t", "free", new_day, 0.0, request_id="one-more")


def test_a_late_usage_event_from_last_month_releases_but_does_not_charge_this_month(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    ledger.admit("capped", "pro", datetime(2025, 6, 30, 23, 59, 59, tzinfo=UTC), 0.3, request_id="june")
    july = datetime(2025, 7, 1, 0, 0, 5, tzinfo=UTC)
    ledger.admit("capped", "pro", july, 0.6, request_id="july")
    ledger.settle("capped", 0.6, july, reservation_id="july", event_id="july:1")
    late = ledger.settle(
        "capped", 0.3, datetime(2025, 6, 30, 23, 59, 59, 500000, tzinfo=UTC), reservation_id="june", event_id="june:1"
    )
    assert late.applied and late.charged_usd == 0
    usage = ledger.usage("capped", july)
    assert (usage.month, usage.spent_usd, usage.outstanding_usd) == ("2025-07", pytest.approx(0.6), 0)
    ledger.admit("capped", "pro", july, 0.4, request_id="fits")  # 0.6 + 0.4 <= 1.0: June's 0.3 is not July's


def test_month_rollover_and_reset_times(catalog: Catalog) -> None:
    ledger = QuotaLedger(catalog)
    ledger.admit("capped", "pro", datetime(2025, 6, 30, 23, 0, tzinfo=UTC), 0.9, request_id="late")
    ledger.settle("capped", 0.95, datetime(2025, 6, 30, 23, 1, tzinfo=UTC), reservation_id="late")
    with pytest.raises(BudgetExceeded) as exc:
        ledger.admit("capped", "pro", datetime(2025, 6, 30, 23, 59, tzinfo=UTC), 0.1)
    assert exc.value.resets_at == datetime(2025, 7, 1, tzinfo=UTC)
    july = ledger.admit("capped", "pro", datetime(2025, 7, 1, 0, 0, tzinfo=UTC), 0.1)
    assert july.spent_usd == 0
    assert next_utc_midnight(datetime(2025, 12, 31, 23, 0, tzinfo=UTC)) == datetime(2026, 1, 1, tzinfo=UTC)
    assert next_month_start(datetime(2025, 12, 5, tzinfo=UTC)) == datetime(2026, 1, 1, tzinfo=UTC)
    assert next_month_start(datetime(2025, 2, 28, 23, 59, tzinfo=UTC)) == datetime(2025, 3, 1, tzinfo=UTC)


def test_unsettled_reservations_expire(catalog: Catalog) -> None:
    cat = catalog.model_copy(update={"routing": RoutingSpec(reservation_ttl_s=60)})
    ledger = QuotaLedger(cat)
    ledger.admit("capped", "pro", NOON, 0.9, request_id="lost")
    with pytest.raises(BudgetExceeded):
        ledger.admit("capped", "pro", NOON + timedelta(seconds=59), 0.2)
    assert ledger.admit("capped", "pro", NOON + timedelta(seconds=61), 0.2).outstanding_usd == pytest.approx(0.2)


def test_state_is_a_plain_json_dict_written_back_whole(catalog: Catalog) -> None:
    class Recording(dict):
        def __init__(self) -> None:
            super().__init__()
            self.sets: list[str] = []

        def __setitem__(self, key: str, value: object) -> None:
            self.sets.append(key)
            super().__setitem__(key, value)

    state = Recording()
    ledger = QuotaLedger(catalog, state)
    ledger.admit("acme", "pro", NOON, 0.01, request_id="x")
    before = state["acme"]
    ledger.settle("acme", 0.02, NOON, reservation_id="x", event_id="x:1")
    assert state.sets == ["acme", "acme"]
    assert state["acme"] is not before  # a fresh dict each time: a Faust table sees the change
    assert json.loads(json.dumps(dict(state))) == dict(state)
    assert state["acme"]["spent_nusd"] == 20_000_000
    # a second ledger over the same state (another worker after a rebalance) continues exactly
    assert QuotaLedger(catalog, state).usage("acme", NOON).spent_usd == 0.02


def test_an_unlisted_tenant_may_lower_its_tier_with_the_hint_but_never_raise_it() -> None:
    from streams.catalog import Catalog

    cat = Catalog(providers={}, tenants={"acme": TenantSpec(tier="basic")})
    assert cat.tier_of("stranger", None, "pro") == "pro"
    assert cat.tier_of("stranger", "free", "pro") == "free"
    assert cat.tier_of("stranger", "enterprise", "pro") == "pro"  # self-declared enterprise is not believed
    assert cat.tier_of("acme", "enterprise", "pro") == "basic"  # a listed tenant's tier always wins
