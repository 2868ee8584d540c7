-- Per-provider aggregates over a recent window: what the alert rules evaluate.
SELECT
    provider,
    count() AS requests,
    countIf(status = 'error') AS errors,
    quantileExactInclusiveIf(0.95)(latency_ms, status != 'cached') AS p95_ms,
    sum(cost_usd) AS cost_usd
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
GROUP BY provider
