"""Real chDB (no mocks): migrations, sink idempotency, report totals, formats, prompts, alerts table."""

from __future__ import annotations

import asyncio
import math
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.alert import Alert
from schemas.health import ProviderHealth
from schemas.usage import UsageEvent
from streams.analytics.alerting import AlertLoop, budget_inputs
from streams.analytics.alerts import AlertEngine, AlertRules, Escalation, UsageWindow, conditions, snapshot_from_store
from streams.analytics.client import ClientReader, create_client
from streams.analytics.endpoint import EndpointReader, QueryEndpoint
from streams.analytics.errors import AnalyticsUnavailable, InvalidReportRequest
from streams.analytics.migrate import RenderOptions, applied_versions, migrate
from streams.analytics.reports import ReportRequest, alert_history, render, report, run_report
from streams.analytics.sink import UsageSink
from streams.catalog import Catalog, TenantSpec
from streams.routing.quota import month_start
from streams.settings import ClickHouseSettings
from tests.fixtures.chdb import chdb_test_root

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def chdb_path() -> Iterator[Path]:
    path = chdb_test_root() / f"store-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def client(chdb_path: Path) -> Iterator[Any]:
    c = create_client(ClickHouseSettings(data_path=chdb_path))
    yield c
    c.close()


@pytest.fixture
def store(client: Any, chdb_path: Path) -> tuple[ClickHouseSettings, Any]:
    """A fresh, migrated database on the shared engine (one chDB path per process)."""
    settings = ClickHouseSettings(data_path=chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    migrate(client, RenderOptions.from_settings(settings))
    return settings, client


def make_events(n: int, *, prefix: str = "req", cost: float = 0.0) -> list[UsageEvent]:
    events = []
    for i in range(n):
        status = "error" if i % 10 == 0 else "cached" if i % 10 == 1 else "ok"
        events.append(
            UsageEvent(
                event_id=f"{prefix}-{i}:1",
                request_id=f"{prefix}-{i}",
                tenant=f"tenant-{i % 3}",
                provider=("openai", "anthropic")[i % 2],
                model=("gpt-4o-mini", "claude-3-5-haiku")[i % 2],
                status=status,
                input_tokens=100 + i,
                output_tokens=10 + i,
                cost_usd=cost or round(0.000137 * (i % 17 + 1), 6),
                saved_cost_usd=0.0005 if status == "cached" else 0.0,
                latency_ms=100.0 + i,
                ts=NOW - timedelta(minutes=i),
            )
        )
    return events


def scalar(client: Any, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def test_migrations_apply_once_and_are_idempotent(client: Any, chdb_path: Path) -> None:
    settings = ClickHouseSettings(data_path=chdb_path, database=f"t_{uuid.uuid4().hex[:12]}")
    options = RenderOptions.from_settings(settings, ttl_days=30)
    assert migrate(client, options) == [1, 2, 3, 4]
    assert migrate(client, options) == []
    # Every statement is IF NOT EXISTS: re-running all files on a migrated schema changes nothing.
    assert migrate(client, options, force=True) == [1, 2, 3, 4]
    assert sorted(applied_versions(client, settings.database)) == [1, 2, 3, 4]
    db = settings.database
    tables = {
        r[0]: r[1] for r in client.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}'").result_rows
    }
    assert tables["usage_events"] == "ReplacingMergeTree"
    assert tables["usage_hourly"] == tables["usage_daily"] == "AggregatingMergeTree"
    assert tables["usage_hourly_mv"] == "MaterializedView"
    assert {"alerts", "prompts", "schema_migrations"} <= set(tables)
    types = dict(
        client.query(
            f"SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'usage_events'"
        ).result_rows
    )
    assert types["tenant"] == types["provider"] == types["model"] == "LowCardinality(String)"
    ddl = scalar(
        client, f"SELECT create_table_query FROM system.tables WHERE database = '{db}' AND name = 'usage_events'"
    )
    assert "toIntervalDay(30)" in ddl or "INTERVAL 30 DAY" in ddl


def test_replay_never_double_counts(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    sink = UsageSink(settings, client=client)
    events = make_events(500)
    asyncio.run(sink.write(events[:300]))
    asyncio.run(sink.write(events[200:]))  # overlaps the first batch by 100
    asyncio.run(sink.write(events))  # a full replay
    asyncio.run(sink.write(events[:50] + events[:50]))  # duplicates inside one batch
    assert sink.stats.inserted == 500
    assert sink.stats.duplicates == 100 + 500 + 100
    db = settings.database
    expected = sum(Decimal(str(e.cost_usd)) for e in events)
    assert scalar(client, f"SELECT count() FROM {db}.usage_events FINAL") == 500
    assert scalar(client, f"SELECT sum(cost_usd) FROM {db}.usage_events FINAL") == expected
    # The materialized-view rollups did not double count either (dedup upstream in the sink).
    assert scalar(client, f"SELECT sum(requests) FROM {db}.usage_hourly") == 500
    assert scalar(client, f"SELECT sum(cost_usd) FROM {db}.usage_daily") == expected
    # Even rows that slip past the sink's look-up (dedup off: two racing writers) are collapsed by FINAL.
    UsageSink(settings, client=client, dedup_lookup=False).write_sync(events[:10])
    assert scalar(client, f"SELECT count() FROM {db}.usage_events FINAL") == 500
    total = report(ClientReader(client, owns_client=False), "cost", since="2d", database=db).total("cost_usd")
    assert total == expected


def test_report_totals_match_inserted_costs_to_the_cent(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    events = make_events(1000)
    UsageSink(settings, client=client).write_sync(events)
    reader = ClientReader(client, owns_client=False)
    rep = report(reader, "cost", since="2d", by="tenant,provider,model", database=settings.database)
    expected = sum(Decimal(str(e.cost_usd)) for e in events)
    assert rep.total("cost_usd") == expected
    assert rep.total("cost_usd").quantize(Decimal("0.01")) == expected.quantize(Decimal("0.01"))
    assert rep.total("requests") == 1000
    assert {r["tenant"] for r in rep.rows} == {"tenant-0", "tenant-1", "tenant-2"}
    by_tenant = {}
    for e in events:
        by_tenant[e.tenant] = by_tenant.get(e.tenant, Decimal(0)) + Decimal(str(e.cost_usd))
    rep_t = report(reader, "cost", since="2d", by="tenant", database=settings.database)
    assert {r["tenant"]: r["cost_usd"] for r in rep_t.rows} == by_tenant
    # Event i is i minutes before NOW: a window from 99.5 minutes before NOW holds exactly events 0..99
    # (anchored on NOW, not on the wall clock, which moves on while a long suite runs).
    recent = report(
        reader,
        "cost",
        since=NOW - timedelta(minutes=99, seconds=30),
        until=NOW + timedelta(seconds=1),
        database=settings.database,
    )
    assert recent.total("requests") == 100
    assert recent.total("cost_usd") == sum(Decimal(str(e.cost_usd)) for e in events[:100])


def test_other_reports_and_tenant_filter(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    events = make_events(200)
    UsageSink(settings, client=client).write_sync(events)
    reader = ClientReader(client, owns_client=False)
    db = settings.database
    errors = report(reader, "errors", since="1d", by="provider", database=db)
    assert errors.total("errors") == sum(1 for e in events if e.status == "error")
    cache = report(reader, "cache", since="1d", database=db)
    assert cache.rows[0]["cache_hits"] == 20
    assert cache.rows[0]["saved_cost_usd"] == Decimal("0.01")
    latency = report(reader, "latency", since="1d", by="provider", database=db)
    assert latency.total("attempts") == 180  # cached hits are not latency samples
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"] for r in latency.rows)
    only = report(reader, "cost", since="1d", tenants=["tenant-1"], database=db)
    assert only.total("requests") == sum(1 for e in events if e.tenant == "tenant-1")
    # User input is only ever a bound parameter: a hostile tenant string matches nothing, breaks nothing.
    hostile = report(reader, "cost", since="1d", tenants=["x') OR 1=1 --"], by="tenant", database=db)
    assert hostile.rows == []


def test_by_is_allow_listed(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    reader = ClientReader(client, owns_client=False)
    for bad in ("tenant; DROP TABLE x", "cost_usd", "tenant,1", "prompt"):
        with pytest.raises(InvalidReportRequest):
            report(reader, "cost", since="1d", by=bad, database=settings.database)
    with pytest.raises(InvalidReportRequest):
        report(reader, "bogus", since="1d", database=settings.database)
    with pytest.raises(InvalidReportRequest):
        report(reader, "cost", since="yesterday-ish", database=settings.database)


def test_formats(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    UsageSink(settings, client=client).write_sync(make_events(120))
    reader = ClientReader(client, owns_client=False)
    rep = report(reader, "cost", since="1d", by="provider", database=settings.database)
    csv_text = render(rep, "csv")
    assert csv_text.splitlines()[0].startswith("provider,requests,")
    assert len(csv_text.splitlines()) == 3
    doc = orjson.loads(render(rep, "json"))
    assert doc["kind"] == "cost" and doc["by"] == ["provider"]
    assert sum(Decimal(r["cost_usd"]) for r in doc["rows"]) == rep.total("cost_usd")  # money: exact strings
    table = render(rep, "table")
    assert "openai" in table and "anthropic" in table
    html = render(rep, "html", reader, database=settings.database)
    assert html.startswith("<!doctype html>") and "<script" not in html
    assert html.count("<svg") == 3
    assert "Cost over time by provider" in html and "Latency percentiles by provider" in html
    with pytest.raises(InvalidReportRequest):
        render(rep, "pdf")


def test_prompts_only_stored_when_enabled(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    events = make_events(4)
    prompts = {e.request_id: f"secret prompt {i}" for i, e in enumerate(events)}
    asyncio.run(UsageSink(settings, client=client).write(events[:2], prompts))
    db = settings.database
    assert scalar(client, f"SELECT count() FROM {db}.prompts") == 0
    opted_in = settings.model_copy(update={"store_prompts": True})
    asyncio.run(UsageSink(opted_in, client=client).write(events[2:], prompts))
    assert sorted(r[0] for r in client.query(f"SELECT prompt FROM {db}.prompts").result_rows) == [
        "secret prompt 2",
        "secret prompt 3",
    ]


def test_prompts_the_workers_put_on_usage_events_are_stored_once_only_when_enabled(
    store: tuple[ClickHouseSettings, Any],
) -> None:
    """The path the pipeline takes (before, nothing ever handed the sink a prompt: the setting did nothing)."""
    settings, client = store
    db = settings.database
    events = [e.model_copy(update={"prompt": f"user: question {i}"}) for i, e in enumerate(make_events(3, prefix="p"))]
    UsageSink(settings, client=client).write_sync(events)
    assert scalar(client, f"SELECT count() FROM {db}.prompts") == 0  # off by default
    opted_in = UsageSink(settings.model_copy(update={"store_prompts": True}), client=client)
    opted_in.write_sync(events[:2])
    opted_in.write_sync(events)  # a replay with one more: every prompt once, the replayed ones included
    rows = client.query(f"SELECT request_id, prompt FROM {db}.prompts FINAL ORDER BY request_id").result_rows
    assert [tuple(r) for r in rows] == [(e.request_id, e.prompt) for e in sorted(events, key=lambda e: e.request_id)]
    stored = client.query(f"SELECT * FROM {db}.usage_events FINAL LIMIT 1").column_names
    assert "prompt" not in stored  # never in the usage table


def test_alerts_table_is_idempotent(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    alert = Alert(
        alert_id="provider_error_rate:openai",
        rule="provider_error_rate",
        subject="openai",
        severity="warning",
        status="firing",
        value=0.08,
        threshold=0.05,
        message="openai: error rate 8.0%",
        started_at=NOW - timedelta(minutes=5),
        ts=NOW,
    )
    sink = UsageSink(settings, client=client)
    asyncio.run(sink.write_alerts([alert]))
    asyncio.run(sink.write_alerts([alert]))
    assert scalar(client, f"SELECT count() FROM {settings.database}.alerts FINAL") == 1


def test_alert_history_lists_transitions_in_order_once(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    base = {
        "alert_id": "provider_unhealthy:openai",
        "rule": "provider_unhealthy",
        "subject": "openai",
        "value": 1.0,
        "threshold": 0.0,
        "message": "openai: failing health checks (circuit open)",
        "started_at": NOW - timedelta(minutes=7),
    }
    fired = Alert(**base, severity="warning", status="firing", ts=NOW - timedelta(minutes=2))
    escalated = Alert(**base, severity="critical", status="firing", ts=NOW - timedelta(minutes=1))
    resolved = Alert(**base, severity="critical", status="resolved", ts=NOW)
    old = Alert(
        **{**base, "started_at": NOW - timedelta(days=2)},
        severity="warning",
        status="firing",
        ts=NOW - timedelta(days=2),
    )
    sink = UsageSink(settings, client=client)
    asyncio.run(sink.write_alerts([resolved, fired, old]))
    asyncio.run(sink.write_alerts([escalated, fired]))  # re-delivery: stored once
    rows = alert_history(ClientReader(client, owns_client=False), NOW - timedelta(hours=1), database=settings.database)
    assert [(r["severity"], r["status"]) for r in rows] == [
        ("warning", "firing"),
        ("critical", "firing"),
        ("critical", "resolved"),
    ]
    assert rows[0]["alert_id"] == "provider_unhealthy:openai" and rows[-1]["ts"].replace(tzinfo=UTC) == NOW


def test_unreachable_server_raises_retryable_unavailable() -> None:
    # Nothing listens on port 1: the HTTP backend must surface a typed, retryable error.
    settings = ClickHouseSettings(backend="http", url="http://127.0.0.1:1", database="aifleet")
    sink = UsageSink(settings)
    with pytest.raises(AnalyticsUnavailable) as info:
        asyncio.run(sink.write(make_events(3)))
    assert info.value.retryable is True
    with pytest.raises(AnalyticsUnavailable):
        asyncio.run(sink.write(make_events(3)))  # and again on retry: no half-open client left behind


def test_report_rejects_empty_window(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    reader = ClientReader(client, owns_client=False)
    with pytest.raises(InvalidReportRequest):
        run_report(reader, ReportRequest("cost", NOW, NOW - timedelta(hours=1)), database=settings.database)


class StepClock:
    """The engine's wall clock and the loop's monotonic clock, moved together."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.mono = 0.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, **kw: float) -> None:
        step = timedelta(**kw)
        self.now += step
        self.mono += step.total_seconds()


def spend_events(prefix: str, tenant: str, n: int, cost: float, *, status: str = "ok") -> list[UsageEvent]:
    return [
        UsageEvent(
            event_id=f"{prefix}-{i}:1",
            request_id=f"{prefix}-{i}",
            tenant=tenant,
            tier="enterprise",
            provider="openai",
            model="gpt-4o-mini",
            status=status,  # type: ignore[arg-type]
            cost_usd=cost,
            latency_ms=120.0,
            ts=NOW - timedelta(seconds=30),
        )
        for i in range(n)
    ]


def test_alerting_resumes_from_the_alerts_table_and_judges_budgets_and_rates_from_the_store(
    store: tuple[ClickHouseSettings, Any],
) -> None:
    """Three 'processes' in turn (a fresh engine each), all reading the real store: a budget alert fires
    once, survives a restart without firing again, escalates, and resolves after a restart once the
    month it counted is over. Rate rules read the usage table (what every analytics process writes)."""
    settings, client = store
    sink = UsageSink(settings, client=client)
    catalog = Catalog(
        providers={},
        tenants={"thrifty": TenantSpec(tier="enterprise", monthly_budget_usd=1.0)},  # enterprise: no default budget
    )
    rules = AlertRules(
        min_requests=5,
        cost_per_request_usd=100.0,  # these calls are dear on purpose: only budgets and error rates are under test
        escalation=Escalation(warn_after=timedelta(0), critical_after=timedelta(0)),
    )
    clock = StepClock(NOW)

    def process() -> AlertLoop:
        return AlertLoop(
            AlertEngine(rules, clock=clock),
            UsageWindow(timedelta(minutes=5), clock=clock),
            open_reader=lambda: ClientReader(client, owns_client=False),
            catalog=catalog,
            source="store",
            budget_every_s=60.0,
            database=settings.database,
            monotonic=clock.monotonic,
        )

    def step(loop: AlertLoop, *, leader: bool = True) -> list[tuple[str, str, str]]:
        alerts = asyncio.run(loop.step(leader=leader))
        sink.write_alerts_sync(alerts)
        return [(a.alert_id, a.severity, a.status) for a in alerts]

    sink.write_sync(spend_events("thrifty-a", "thrifty", 9, 0.1) + spend_events("big", "unlimited", 5, 10.0))
    first = process()
    assert step(first, leader=False) == []  # not the evaluator: nothing read, nothing emitted
    assert step(first) == [("tenant_budget:thrifty", "warning", "firing")]  # $0.90 of $1.00
    assert step(first) == []

    second = process()  # a restart: resumes the firing warning instead of sending it again
    assert step(second) == []
    sink.write_sync(spend_events("thrifty-b", "thrifty", 2, 0.1))  # $1.10
    clock.advance(seconds=30)
    assert step(second) == []  # spend is re-read once a minute
    clock.advance(seconds=31)
    assert step(second) == [("tenant_budget:thrifty", "critical", "firing")]

    sink.write_sync(spend_events("failing", "other", 10, 0.0, status="error"))  # all errors: a rate alert
    assert step(second) == [("provider_error_rate:openai", "critical", "firing")]

    clock.advance(days=35)  # a new month: no spend yet; the failing calls have left the window
    third = process()
    assert sorted(step(third)) == [
        ("provider_error_rate:openai", "critical", "resolved"),
        ("tenant_budget:thrifty", "critical", "resolved"),
    ]
    assert step(third) == []
    reader = ClientReader(client, owns_client=False)
    history = alert_history(reader, NOW - timedelta(hours=1), database=settings.database)
    assert [(r["alert_id"], r["severity"], r["status"]) for r in history if r["rule"] == "tenant_budget"] == [
        ("tenant_budget:thrifty", "warning", "firing"),
        ("tenant_budget:thrifty", "critical", "firing"),
        ("tenant_budget:thrifty", "critical", "resolved"),
    ]


def test_a_resumed_stream_evaluator_waits_for_the_circuits_and_a_whole_window_before_resolving(
    store: tuple[ClickHouseSettings, Any],
) -> None:
    """What a restarted analytics process did: its window starts empty and its health feed is still
    replaying, so its first evaluation resolved every rate and circuit alert it had just resumed."""
    settings, client = store
    sink = UsageSink(settings, client=client)
    rules = AlertRules(min_requests=5, escalation=Escalation(warn_after=timedelta(0), critical_after=timedelta(0)))
    clock = StepClock(NOW)
    health = {"known": False}

    def process(window: UsageWindow) -> AlertLoop:
        return AlertLoop(
            AlertEngine(rules, clock=clock),
            window,
            open_reader=lambda: ClientReader(client, owns_client=False),
            catalog=Catalog(providers={}),
            source="stream",
            database=settings.database,
            monotonic=clock.monotonic,
            health_ready=lambda: health["known"],
        )

    def step(loop: AlertLoop) -> list[tuple[str, str]]:
        alerts = asyncio.run(loop.step(leader=True))
        sink.write_alerts_sync(alerts)
        return sorted((a.alert_id, a.status) for a in alerts)

    first_window = UsageWindow(timedelta(minutes=5), clock=clock)
    first_window.add_all(spend_events("failing", "acme", 10, 0.0, status="error"))
    first_window.add_health(ProviderHealth(provider="openai", state="open", reason="5 failures", ts=NOW))
    health["known"] = True
    assert step(process(first_window)) == [
        ("provider_error_rate:openai", "firing"),
        ("provider_unhealthy:openai", "firing"),
    ]

    # the restart: an empty window, the circuit not heard of yet
    clock.advance(seconds=10)
    health["known"] = False
    window = UsageWindow(timedelta(minutes=5), clock=clock)
    second = process(window)
    assert step(second) == []  # not judged before the health feed has replayed its look-back
    window.add_health(ProviderHealth(provider="openai", state="open", reason="5 failures", ts=NOW))
    health["known"] = True
    clock.advance(seconds=10)
    assert step(second) == []  # circuit still open; the empty window is no evidence of recovery
    window.add_health(ProviderHealth(provider="openai", state="closed", reason="probe ok", ts=clock.now))
    clock.advance(seconds=10)
    assert step(second) == [("provider_unhealthy:openai", "resolved")]  # the error rate waits for a window
    clock.advance(minutes=5)
    assert step(second) == [("provider_error_rate:openai", "resolved")]  # a whole window without failures


def test_budget_inputs_use_the_tenants_own_budget_else_its_tiers() -> None:
    catalog = Catalog(
        providers={},
        tenants={"pinned": TenantSpec(tier="pro", monthly_budget_usd=5.0), "open": TenantSpec(tier="enterprise")},
    )
    rows = [("pinned", "pro", Decimal("4.5")), ("open", "enterprise", Decimal("99")), ("walk-in", "free", Decimal("1"))]
    spend, budgets = budget_inputs(rows, catalog)
    free_budget = catalog.tier("free").monthly_budget_usd
    assert budgets["pinned"] == 5.0 and spend["pinned"] == 4.5
    assert "open" not in budgets  # enterprise has no default budget: nothing to alert on
    assert (budgets.get("walk-in"), spend.get("walk-in")) == ((free_budget, 1.0) if free_budget else (None, None))
    assert month_start(datetime(2026, 11, 29, 9, 30, tzinfo=UTC)) == datetime(2026, 11, 1, tzinfo=UTC)


@contextmanager
def serving(settings: ClickHouseSettings) -> Iterator[EndpointReader]:
    """The loopback query endpoint on this process's engine, read through an ``EndpointReader``."""
    loop = asyncio.new_event_loop()
    endpoint = QueryEndpoint(settings, settings.data_path or Path())
    loop.run_until_complete(endpoint.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    reader = EndpointReader(endpoint.url, endpoint.token)
    try:
        yield reader
    finally:
        reader.close()
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_store_snapshot_leaves_cache_hits_out_and_survives_a_provider_with_only_cache_hits(
    store: tuple[ClickHouseSettings, Any],
) -> None:
    settings, client = store
    at = NOW - timedelta(seconds=30)

    def event(i: int, provider: str, status: str, cost: float = 0.0) -> UsageEvent:
        cached = status == "cached"
        return UsageEvent(
            event_id=f"w{i}:cache" if cached else f"w{i}:1",
            request_id=f"w{i}",
            tenant="acme",
            provider=provider,
            model="m",
            status=status,  # type: ignore[arg-type]
            attempt=0 if cached else 1,
            cost_usd=cost,
            latency_ms=5.0 if cached else 200.0,
            ts=at,
        )

    events = [event(i, "openai", "error") for i in range(5)]
    events += [event(i, "openai", "ok", 0.02) for i in range(5, 20)]
    events += [event(i, "openai", "cached") for i in range(100, 180)]
    events += [event(i, "anthropic", "cached") for i in range(200, 225)]  # only cache hits in the window
    UsageSink(settings, client=client).write_sync(events)
    direct = ClientReader(client, owns_client=False)
    with serving(settings) as remote:
        for reader in (direct, remote):
            snap = snapshot_from_store(reader, now=NOW, database=settings.database)
            assert set(snap.providers) == {"openai"}
            stats = snap.providers["openai"]
            assert (stats.requests, stats.errors, stats.p95_latency_ms) == (20, 5, 200.0)
            assert abs(stats.cost_usd - 0.30) < 1e-9
            assert {c.rule for c in conditions(snap, AlertRules())} == {
                "provider_error_rate",
                "provider_cost_per_request",
            }
        # a non-finite float crosses the endpoint's JSON as null and comes back as NaN, as read directly
        _, rows = remote.query_rows("SELECT nan AS x, CAST(NULL AS Nullable(Float64)) AS y")
        assert math.isnan(rows[0][0]) and rows[0][1] is None


def test_events_older_than_the_usage_ttl_are_dropped_so_replays_never_inflate_the_rollups(
    store: tuple[ClickHouseSettings, Any],
) -> None:
    settings, client = store
    assert settings.ttl_days == 90
    sink = UsageSink(settings, client=client)
    old = make_events(2, prefix="old", cost=1.0)
    old = [e.model_copy(update={"ts": NOW - timedelta(days=100)}) for e in old]
    recent = [e.model_copy(update={"ts": NOW - timedelta(days=80)}) for e in make_events(1, prefix="kept", cost=1.0)]
    for _ in range(3):  # the first write and two replays (a restart, `analytics rebuild --from-earliest`)
        sink.write_sync(old + recent)
    db = settings.database
    assert scalar(client, f"SELECT count() FROM {db}.usage_events FINAL") == 1
    assert scalar(client, f"SELECT sum(requests) FROM {db}.usage_daily") == 1
    assert scalar(client, f"SELECT sum(cost_usd) FROM {db}.usage_daily") == Decimal("1")
    assert (sink.stats.inserted, sink.stats.duplicates, sink.stats.expired) == (1, 2, 6)


def test_rejected_events_release_budget_holds_but_are_not_stored(store: tuple[ClickHouseSettings, Any]) -> None:
    settings, client = store
    sink = UsageSink(settings, client=client)
    [kept, rejected] = make_events(2, prefix="rej")
    rejected = rejected.model_copy(update={"status": "rejected", "attempt": 0, "cost_usd": 0.0})
    assert sink.write_sync([kept, rejected]) == 1
    ids = client.query(f"SELECT event_id FROM {settings.database}.usage_events FINAL").result_rows
    assert [row[0] for row in ids] == [kept.event_id]


def test_reports_count_requests_once_however_many_attempts_and_keep_the_attempts(
    store: tuple[ClickHouseSettings, Any],
) -> None:
    settings, client = store

    def event(event_id: str, status: str, cost: float, attempt: int) -> UsageEvent:
        return UsageEvent(
            event_id=event_id,
            request_id=event_id.split(":", maxsplit=1)[0],
            tenant="acme",
            provider="openai",
            model="m",
            status=status,  # type: ignore[arg-type]
            error_reason="timeout" if status == "error" else None,  # type: ignore[arg-type]
            attempt=attempt,
            cost_usd=cost,
            saved_cost_usd=0.02 if status == "cached" else 0.0,
            ts=NOW - timedelta(minutes=1),
        )

    # A: attempt 1 times out, attempt 2 answers for $0.02; B: a cache hit of A's answer; C: fails twice
    UsageSink(settings, client=client).write_sync(
        [
            event("A:1", "error", 0.0, 1),
            event("A:2", "ok", 0.02, 2),
            event("B:cache", "cached", 0.0, 0),
            event("C:1", "error", 0.0, 1),
            event("C:2", "error", 0.0, 2),
        ]
    )
    reader = ClientReader(client, owns_client=False)
    [cost] = report(reader, "cost", since="1h", by="tenant", database=settings.database).rows
    assert (cost["requests"], cost["attempts"], cost["cost_usd"]) == (3, 5, Decimal("0.02"))
    assert cost["cost_per_request"] == Decimal("0.006666666")  # per request, at the column scale
    [cache] = report(reader, "cache", since="1h", by="tenant", database=settings.database).rows
    assert (cache["requests"], cache["cache_hits"]) == (3, 1) and cache["hit_rate"] == 1 / 3
    [errors] = report(reader, "errors", since="1h", by="tenant", database=settings.database).rows
    assert (errors["requests"], errors["attempts"], errors["errors"], errors["failed_requests"]) == (3, 5, 3, 1)
    assert errors["error_rate"] == 1 / 3 and errors["attempt_error_rate"] == 3 / 5
    assert errors["top_reason"] == "timeout"
