-- Spend per tenant since a point in time (budget alerting seeds itself from this).
SELECT tenant, sum(cost_usd) AS cost_usd
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')}
GROUP BY tenant
