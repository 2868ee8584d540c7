-- Alert state changes (schemas.alert.Alert): one row per firing/escalation/resolution.
-- The sorting key is the transition itself, so re-delivering an alert never duplicates it.

CREATE TABLE IF NOT EXISTS {{db}}.alerts{{local}}{{on_cluster}}
(
    alert_id String,
    rule LowCardinality(String),
    subject String,
    severity LowCardinality(String),
    status LowCardinality(String),
    value Float64,
    threshold Float64,
    message String,
    started_at DateTime64(3, 'UTC'),
    ts DateTime64(3, 'UTC')
)
ENGINE = {{engine ReplacingMergeTree(ts)}}
PARTITION BY toYYYYMM(started_at)
ORDER BY (alert_id, started_at, status, severity)
TTL toDateTime(ts) + INTERVAL {{rollup_ttl_days}} DAY;

-- @cluster-only
CREATE TABLE IF NOT EXISTS {{db}}.alerts{{on_cluster}} AS {{db}}.alerts_local
ENGINE = Distributed({{cluster}}, {{db}}, alerts_local, cityHash64(alert_id));
