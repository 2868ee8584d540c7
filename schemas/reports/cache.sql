-- Cache report: semantic/exact cache hits, hit rate and the spend they saved.
-- requests: distinct request ids (a retried request counts once); hit_rate = cache_hits / requests.
SELECT {{dims}}
    uniqExact(request_id) AS requests,
    countIf(status = 'cached') AS cache_hits,
    if(requests = 0, 0, cache_hits / requests) AS hit_rate,
    sum(saved_cost_usd) AS saved_cost_usd
FROM {{db}}.usage_events FINAL
WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {until:DateTime64(3, 'UTC')}
  AND (empty({tenants:Array(String)}) OR has({tenants:Array(String)}, tenant))
{{group_by}}
ORDER BY cache_hits DESC
