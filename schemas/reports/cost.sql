-- Cost report: spend and tokens per group, from the deduplicated base table (FINAL: a replayed
-- event is counted once). {{dims}} / {{group_by}} come from the --by allow-list only.
-- requests: distinct request ids (a retried request and a cache hit count once each);
-- attempts: usage rows (each provider call, each cache hit). cost_per_request is per request.
SELECT {{dims}}
    uniqExact(request_id) AS requests,
    count() AS attempts,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd,
    sum(saved_cost_usd) AS saved_cost_usd,
    if(requests = 0, 0, cost_usd / requests) AS cost_per_request
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND (empty({tenants:Array(String)}) OR has({tenants:Array(String)}, tenant))
{{group_by}}
ORDER BY cost_usd DESC
