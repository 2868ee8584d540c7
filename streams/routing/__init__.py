"""Cost-aware routing: the cheapest provider that is good enough, tier allow-lists, quotas and budgets.

- ``cost``: token and cost estimates before dispatch, exact cost after.
- ``latency``: observed p95 latency per provider and model (the cost tie-break).
- ``policy``: ``CostAwareRouter``, the pipeline's router: cheapest good-enough provider, with tiers and load.
- ``quota``: ``QuotaLedger``, per-tenant daily request quotas and monthly USD budgets over a plain dict.
- ``simulate`` / ``cli``: deterministic workloads comparing policies, and the overflow scenario.
"""
