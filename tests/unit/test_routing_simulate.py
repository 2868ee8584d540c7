"""The routing simulations: the policy saves money without violating floors; overflow stays in limits."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from streams.catalog import Catalog, load_catalog
from streams.routing.cli import app
from streams.routing.simulate import compare_policies, overflow, role_counts, workload
from streams.settings import DEFAULT_CONFIG_FILE


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEFAULT_CONFIG_FILE)


def test_workload_is_deterministic() -> None:
    a, b = workload(50, seed=5), workload(50, seed=5)
    assert [s.request.model_dump(exclude={"created_at"}) for s in a] == [
        s.request.model_dump(exclude={"created_at"}) for s in b
    ]
    assert a != workload(50, seed=6)


def test_policy_is_cheapest_and_meets_every_floor(catalog: Catalog) -> None:
    results = {r.policy: r for r in compare_policies(catalog, workload(600, seed=7))}
    policy, premium, rr = results["cost-aware"], results["always-premium"], results["round-robin"]
    assert policy.requests == premium.requests == rr.requests == 600
    assert policy.unrouted == 0
    assert policy.violations == 0
    assert premium.violations == 0
    assert rr.floor_violations > 0
    assert policy.cost_usd < premium.cost_usd / 2
    assert policy.cost_usd < rr.cost_usd


def test_every_policy_keeps_to_the_tier_and_costs_compare_over_the_same_requests(catalog: Catalog) -> None:
    n = 400
    results = {r.policy: r for r in compare_policies(catalog, workload(n, seed=7, tier="free"), tier="free")}
    free = catalog.tier("free")
    assert results["cost-aware"].unrouted > 0  # the self-hosted models miss some floors and contexts
    common = results["cost-aware"].requests
    assert common + results["cost-aware"].unrouted == n
    for r in results.values():
        assert r.requests == common  # summed over the requests every policy routed
        assert all(free.allows(p) for p in r.providers), r.providers


def test_overflow_goes_to_secondaries_within_limits(catalog: Catalog) -> None:
    o = overflow(catalog, demand=1.25, seconds=60, warmup_s=20)
    by_role = role_counts(o)
    assert o.unserved == 0
    assert o.within_limits
    assert o.secondary_before_threshold == 0
    assert by_role["backup"] == 0
    assert by_role["secondary"] > 0.1 * o.demand_requests
    assert o.secondaries_first_at_s is not None and o.secondaries_first_at_s >= 20  # none during the warm-up
    for p in o.providers:
        assert p.peak_requests_60s <= p.rpm and p.peak_tokens_60s <= p.tpm
    openai = next(p for p in o.providers if p.provider == "openai")
    assert openai.peak_requests_60s >= 0.95 * openai.rpm  # the primary is used to its limit first


def test_cli_json(catalog: Catalog) -> None:
    result = CliRunner().invoke(app, ["routing", "--requests", "200", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    policies = {p["policy"]: p for p in doc["policies"]}
    assert policies["cost-aware"]["cost_usd"] < policies["always-premium"]["cost_usd"]
    assert doc["overflow"]["within_limits"] is True


def test_cli_tables() -> None:
    result = CliRunner().invoke(app, ["routing", "--requests", "100"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cost-aware" in result.output and "Overflow" in result.output
