-- Per-provider aggregates over a recent window: what the alert rules evaluate.
-- Cache hits are left out: they carry the name of the provider whose answer was cached, but that
-- provider was not called, so they must not dilute its error rate, latency or cost per request.
SELECT
    provider,
    count() AS requests,
    countIf(status = 'error') AS errors,
    ifNotFinite(quantileExactInclusive(0.95)(latency_ms), 0) AS p95_ms,
    sum(cost_usd) AS cost_usd
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND status != 'cached'
GROUP BY provider
