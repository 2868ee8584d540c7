"""Migration rendering (cluster variant checked as SQL text: there is no cluster here) and SQL safety."""

from __future__ import annotations

import re

import pytest

from streams.analytics.errors import AnalyticsQueryError, InvalidReportRequest
from streams.analytics.migrate import RenderOptions, load_migrations, render, render_all
from streams.analytics.reports import GROUP_COLUMNS, _params, load_sql, parse_by, parse_since


def test_local_rendering_has_no_cluster_artifacts() -> None:
    sql = render_all(RenderOptions(database="aifleet"))
    assert "ON CLUSTER" not in sql and "Replicated" not in sql and "Distributed" not in sql
    assert "_local" not in sql
    assert "ENGINE = ReplacingMergeTree(ingested_at)" in sql
    assert "CREATE TABLE IF NOT EXISTS aifleet.usage_events\n" in sql
    assert "{{" not in sql


def test_cluster_rendering() -> None:
    options = RenderOptions(database="aifleet", cluster="prod_cluster", ttl_days=14, rollup_ttl_days=365)
    sql = render_all(options)
    statements = [s for s in sql.split(";\n") if s.strip().startswith("CREATE")]
    # Every DDL statement targets the whole cluster.
    assert all(" ON CLUSTER 'prod_cluster'" in s for s in statements)
    # Storage tables are Replicated*, named *_local, with the standard ZooKeeper path macros.
    assert (
        "CREATE TABLE IF NOT EXISTS aifleet.usage_events_local ON CLUSTER 'prod_cluster'" in sql
        and "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', "
        "'{replica}', ingested_at)"
        in sql
    )
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in sql
    assert not re.search(r"ENGINE = (ReplacingMergeTree|AggregatingMergeTree|MergeTree)", sql)
    # A Distributed table takes the plain name, sharding usage by event_id so replays meet their twin.
    assert (
        "CREATE TABLE IF NOT EXISTS aifleet.usage_events ON CLUSTER 'prod_cluster' AS aifleet.usage_events_local\n"
        "ENGINE = Distributed('prod_cluster', aifleet, usage_events_local, cityHash64(event_id))" in sql
    )
    for table in ("usage_hourly", "usage_daily", "alerts", "prompts"):
        assert f"ENGINE = Distributed('prod_cluster', aifleet, {table}_local" in sql
    # Materialized views read and write the local tables on each shard.
    assert "TO aifleet.usage_hourly_local" in sql and "FROM aifleet.usage_events_local" in sql
    assert "INTERVAL 14 DAY" in sql and "INTERVAL 365 DAY" in sql
    assert "{{" not in sql


def test_migration_files_are_numbered_and_ordered() -> None:
    migrations = load_migrations(RenderOptions())
    assert [m.version for m in migrations] == [1, 2, 3, 4]
    assert [m.name for m in migrations] == ["usage_events", "usage_rollups", "alerts", "prompts"]
    assert all(m.statements for m in migrations)


@pytest.mark.parametrize(
    "options",
    [
        RenderOptions(database="aifleet; DROP DATABASE x"),
        RenderOptions(cluster="c' ; DROP"),
        RenderOptions(ttl_days=0),
    ],
)
def test_render_rejects_unsafe_options(options: RenderOptions) -> None:
    with pytest.raises(AnalyticsQueryError):
        render_all(options)


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(AnalyticsQueryError):
        render("SELECT {{nope}}", RenderOptions())


def test_report_sql_only_interpolates_allow_listed_names() -> None:
    sql = load_sql("cost", "aifleet", ("tenant", "day"))
    assert "tenant AS tenant, toDate(ts) AS day," in sql and "GROUP BY tenant, day" in sql
    assert "{since:DateTime64(3, 'UTC')}" in sql and "{tenants:Array(String)}" in sql
    assert "FROM aifleet.usage_events FINAL" in sql
    with pytest.raises(InvalidReportRequest):
        parse_by("tenant,ts) OR 1=1 --")
    assert parse_by("provider, model,provider") == ("provider", "model")
    assert set(GROUP_COLUMNS) >= {"tenant", "provider", "model"}


def test_http_binding_keeps_user_input_out_of_the_sql_text() -> None:
    """The HTTP code path: clickhouse-connect sends {name:Type} parameters as param_* values."""
    from datetime import UTC, datetime

    from clickhouse_connect.driver.binding import bind_query

    sql = load_sql("cost", "aifleet", ("tenant",))
    params = _params(datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 8, tzinfo=UTC), ["x') OR 1=1 --"])
    final_sql, bound = bind_query(sql, params)
    assert "OR 1=1" not in final_sql and final_sql == sql
    assert bound["param_since"] == "2025-06-01 00:00:00.000"
    assert "OR 1=1" in bound["param_tenants"]


def test_parse_since() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2025, 6, 8, tzinfo=UTC)
    assert parse_since("7d", now=now) == now - timedelta(days=7)
    assert parse_since("90m", now=now) == now - timedelta(minutes=90)
    assert parse_since("2025-06-01", now=now) == datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(InvalidReportRequest):
        parse_since("last tuesday", now=now)
