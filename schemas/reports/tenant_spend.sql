-- Spend per tenant since a point in time, with the tier of its latest event (budget alerting reads this).
SELECT tenant, argMax(tier, ts) AS tier, sum(cost_usd) AS cost_usd
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')}
GROUP BY tenant
