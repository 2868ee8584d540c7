-- Latency report: percentiles of answered (non-cached) attempts per group (attempts: how many).
SELECT {{dims}}
    count() AS attempts,
    avg(latency_ms) AS avg_ms,
    quantilesExactInclusive(0.5, 0.95, 0.99)(latency_ms) AS q,
    q[1] AS p50_ms,
    q[2] AS p95_ms,
    q[3] AS p99_ms,
    max(latency_ms) AS max_ms
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND status != 'cached'
  AND (empty({tenants:Array(String)}) OR has({tenants:Array(String)}, tenant))
{{group_by}}
ORDER BY p95_ms DESC
