-- Error report per group. requests: distinct request ids; attempts: usage rows; errors: failed
-- attempts. failed_requests: requests none of whose attempts in the group was answered (ok or
-- cached); statuses are ok/error/cached, so that is requests minus those with a non-error row.
-- error_rate = failed_requests / requests (a request retried to success is not a failure);
-- attempt_error_rate = errors / attempts (what each call to a provider does).
SELECT {{dims}}
    uniqExact(request_id) AS requests,
    count() AS attempts,
    countIf(status = 'error') AS errors,
    requests - uniqExactIf(request_id, status != 'error') AS failed_requests,
    if(requests = 0, 0, failed_requests / requests) AS error_rate,
    if(attempts = 0, 0, errors / attempts) AS attempt_error_rate,
    topKIf(1)(error_reason, status = 'error')[1] AS top_reason
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND (empty({tenants:Array(String)}) OR has({tenants:Array(String)}, tenant))
{{group_by}}
ORDER BY failed_requests DESC, errors DESC
