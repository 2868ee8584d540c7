-- Hourly and daily rollups per tenant/provider/model, fed by materialized views on usage_events.
-- MVs fire on every insert block, so they are only as duplicate-free as the inserts: the sink
-- drops events whose event_id is already stored before inserting (dedup upstream). Reports that
-- must be exact (cost, the CLI) read the deduplicated base table with FINAL; the rollups serve
-- dashboards and long ranges. See docs/analytics.md.

CREATE TABLE IF NOT EXISTS {{db}}.usage_hourly{{local}}{{on_cluster}}
(
    hour DateTime('UTC'),
    tenant LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    requests SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    cached SimpleAggregateFunction(sum, UInt64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 9)),
    saved_cost_usd SimpleAggregateFunction(sum, Decimal(38, 9)),
    latency_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64)
)
ENGINE = {{engine AggregatingMergeTree}}
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, tenant, provider, model)
TTL hour + INTERVAL {{rollup_ttl_days}} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.usage_hourly_mv{{on_cluster}}
TO {{db}}.usage_hourly{{local}}
AS SELECT
    toStartOfHour(ts) AS hour,
    tenant,
    provider,
    model,
    count() AS requests,
    countIf(status = 'error') AS errors,
    countIf(status = 'cached') AS cached,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd,
    sum(saved_cost_usd) AS saved_cost_usd,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms
FROM {{db}}.usage_events{{local}}
GROUP BY hour, tenant, provider, model;

CREATE TABLE IF NOT EXISTS {{db}}.usage_daily{{local}}{{on_cluster}}
(
    day Date,
    tenant LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    requests SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    cached SimpleAggregateFunction(sum, UInt64),
    input_tokens SimpleAggregateFunction(sum, UInt64),
    output_tokens SimpleAggregateFunction(sum, UInt64),
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 9)),
    saved_cost_usd SimpleAggregateFunction(sum, Decimal(38, 9)),
    latency_ms AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float64)
)
ENGINE = {{engine AggregatingMergeTree}}
PARTITION BY toYYYYMM(day)
ORDER BY (day, tenant, provider, model)
TTL day + INTERVAL {{rollup_ttl_days}} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.usage_daily_mv{{on_cluster}}
TO {{db}}.usage_daily{{local}}
AS SELECT
    toDate(ts) AS day,
    tenant,
    provider,
    model,
    count() AS requests,
    countIf(status = 'error') AS errors,
    countIf(status = 'cached') AS cached,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd,
    sum(saved_cost_usd) AS saved_cost_usd,
    quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms
FROM {{db}}.usage_events{{local}}
GROUP BY day, tenant, provider, model;

-- @cluster-only
CREATE TABLE IF NOT EXISTS {{db}}.usage_hourly{{on_cluster}} AS {{db}}.usage_hourly_local
ENGINE = Distributed({{cluster}}, {{db}}, usage_hourly_local, rand());

-- @cluster-only
CREATE TABLE IF NOT EXISTS {{db}}.usage_daily{{on_cluster}} AS {{db}}.usage_daily_local
ENGINE = Distributed({{cluster}}, {{db}}, usage_daily_local, rand());
