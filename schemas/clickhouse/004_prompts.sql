-- Prompt text, kept apart from usage so it can have its own TTL and access rights.
-- The table always exists; the sink writes to it only when settings.clickhouse.store_prompts is
-- true (off by default: prompts are never stored unless an operator opts in).

CREATE TABLE IF NOT EXISTS {{db}}.prompts{{local}}{{on_cluster}}
(
    request_id String,
    tenant LowCardinality(String),
    prompt String CODEC(ZSTD(3)),
    ts DateTime64(3, 'UTC')
)
ENGINE = {{engine ReplacingMergeTree}}
PARTITION BY toYYYYMM(ts)
ORDER BY request_id
TTL toDateTime(ts) + INTERVAL {{ttl_days}} DAY;

-- @cluster-only
CREATE TABLE IF NOT EXISTS {{db}}.prompts{{on_cluster}} AS {{db}}.prompts_local
ENGINE = Distributed({{cluster}}, {{db}}, prompts_local, cityHash64(request_id));
