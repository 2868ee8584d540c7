-- Error report: error counts and rates per group, with the most frequent reason.
SELECT {{dims}}
    count() AS requests,
    countIf(status = 'error') AS errors,
    if(requests = 0, 0, errors / requests) AS error_rate,
    topKIf(1)(error_reason, status = 'error')[1] AS top_reason
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND (empty({tenants:Array(String)}) OR has({tenants:Array(String)}, tenant))
{{group_by}}
ORDER BY errors DESC
