-- Alert transitions (fired, escalated, resolved) since a point in time, oldest first.
SELECT alert_id, rule, subject, severity, status, value, threshold, message, started_at, ts
FROM {{db}}.alerts FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')}
ORDER BY ts, alert_id, status = 'resolved', severity = 'critical'
