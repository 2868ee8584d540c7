-- The last transition of every alert since a point in time: what an alerting agent resumes from
-- after a restart or a change of leader (firing ones are still firing; resolved ones may be cooling down).
SELECT alert_id, rule, subject, severity, status, value, threshold, message, started_at, ts
FROM {{db}}.alerts FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')}
ORDER BY alert_id, ts DESC, status = 'resolved' DESC, severity = 'critical' DESC
LIMIT 1 BY alert_id
