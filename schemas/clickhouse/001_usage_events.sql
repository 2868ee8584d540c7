-- Usage events: one row per attempt (and per cache hit), the source of every cost report.
-- Keyed by event_id (deterministic, '<request_id>:<attempt>'): a replayed event lands on the same
-- sorting key and ReplacingMergeTree collapses it; reports read with FINAL, so a replay never
-- double-counts. In cluster mode the Distributed table shards by cityHash64(event_id), so both
-- copies of a replayed event always meet on the same shard.

CREATE DATABASE IF NOT EXISTS {{db}}{{on_cluster}};

CREATE TABLE IF NOT EXISTS {{db}}.usage_events{{local}}{{on_cluster}}
(
    event_id String,
    request_id String,
    tenant LowCardinality(String),
    tier LowCardinality(String),
    kind LowCardinality(String),
    provider LowCardinality(String),
    model LowCardinality(String),
    status LowCardinality(String),
    error_reason LowCardinality(String),
    attempt UInt16,
    input_tokens UInt64,
    output_tokens UInt64,
    cost_usd Decimal(18, 9),
    saved_cost_usd Decimal(18, 9),
    latency_ms Float64,
    streamed Bool,
    route_reason LowCardinality(String),
    region LowCardinality(String),
    worker LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {{engine ReplacingMergeTree(ingested_at)}}
PARTITION BY toYYYYMM(ts)
ORDER BY event_id
TTL toDateTime(ts) + INTERVAL {{ttl_days}} DAY;

-- @cluster-only
CREATE TABLE IF NOT EXISTS {{db}}.usage_events{{on_cluster}} AS {{db}}.usage_events_local
ENGINE = Distributed({{cluster}}, {{db}}, usage_events_local, cityHash64(event_id));
