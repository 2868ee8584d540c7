-- Cost over time per provider (the HTML report's chart), in {bucket_s}-second buckets.
SELECT
    toStartOfInterval(ts, toIntervalSecond({bucket_s:UInt32})) AS bucket,
    provider,
    sum(cost_usd) AS cost_usd
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND (empty({tenants:Array(String)}) OR has({tenants:Array(String)}, tenant))
GROUP BY bucket, provider
ORDER BY bucket, provider
