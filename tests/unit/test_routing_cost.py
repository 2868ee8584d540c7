"""Token and cost estimates before dispatch, exact cost after, and the shipped catalog's shape."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from schemas.request import Message, Request
from schemas.response import TokenUsage
from streams.catalog import DEFAULT_TIERS, Catalog, ProviderSpec, RoutingSpec, TierSpec, load_catalog
from streams.routing.cost import (
    actual_cost,
    approx_tokens,
    estimate_cost,
    estimate_tokens,
    format_usd,
    tiktoken_counter,
)
from streams.settings import DEFAULT_CONFIG_FILE


def test_approximation_is_ceil_chars_over_four_plus_non_ascii() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("abcd") == 1
    assert approx_tokens("abcde") == 2
    assert approx_tokens("x" * 4000) == 1000
    assert approx_tokens("日本語です") == 5  # a token per non-ASCII character
    assert approx_tokens("ab日本") == 1 + 2
    assert approx_tokens("abcdefgh", chars_per_token=2) == 4


def test_chat_estimate_counts_framing_and_output() -> None:
    req = Request(
        request_id="r",
        tenant="t",
        messages=[Message(role="system", content="x" * 40), Message(role="user", content="y" * 401)],
        max_tokens=100,
    )
    est = estimate_tokens(req)
    assert est.input_tokens == (10 + 3) + (101 + 3) + 3
    assert est.output_tokens == 100
    assert est.context_tokens == est.total_tokens == est.input_tokens + 100
    unbounded = estimate_tokens(req.model_copy(update={"max_tokens": None}), RoutingSpec(default_output_tokens=77))
    assert unbounded.output_tokens == 77


def test_embedding_estimate_sums_inputs_and_checks_the_largest() -> None:
    req = Request(request_id="e", tenant="t", kind="embedding", input=["a" * 40, "b" * 400, "c"])
    est = estimate_tokens(req)
    assert (est.input_tokens, est.output_tokens, est.context_tokens) == (10 + 100 + 1, 0, 100)


def test_estimated_and_actual_cost_use_list_prices() -> None:
    catalog = load_catalog(DEFAULT_CONFIG_FILE)
    mini = catalog.providers["openai"].model("gpt-4o-mini")
    assert mini is not None
    req = Request(request_id="r", tenant="t", messages=[Message(role="user", content="x" * 4000)], max_tokens=500)
    est = estimate_tokens(req, catalog.routing)
    assert estimate_cost(mini, est) == pytest.approx((1006 * 0.15 + 500 * 0.60) / 1e6)
    assert actual_cost(mini, TokenUsage(input_tokens=1000, output_tokens=250)) == pytest.approx(0.0003)
    assert format_usd(0.000012) == "$0.000012"
    assert format_usd(0) == "$0"
    assert format_usd(2e-8) == "$2.00e-08"
    assert format_usd(12.5) == "$12.5"


def test_tiktoken_counter_is_optional() -> None:
    counter = tiktoken_counter()
    if counter is None:  # not installed, or its BPE file cannot be fetched offline (the case here)
        return
    assert 0 < counter("hello world") <= approx_tokens("hello world") + 2


def test_shipped_catalog_has_priced_providers_tiers_and_tenants() -> None:
    catalog = load_catalog(DEFAULT_CONFIG_FILE)
    assert catalog.prices_read == "2025-06-01"
    assert set(catalog.providers) >= {"openai", "azure", "anthropic", "grok", "huggingface", "vllm", "ollama"}
    roles = {name: spec.role for name, spec in catalog.providers.items()}
    assert roles["openai"] == "primary" and roles["azure"] == "secondary" and roles["vllm"] == "backup"
    for spec in catalog.providers.values():
        assert spec.rpm > 0 and spec.tpm > 0 and spec.burst > 0 and spec.region
        for m in spec.models:
            assert 0 <= m.quality <= 1 and m.context_window > 0 and m.capabilities
    assert catalog.tiers["free"] == TierSpec(
        requests_per_day=100, quality_floor=0.5, providers=["local", "vllm", "ollama"], cache_ttl_s=86_400.0
    )
    assert catalog.tiers["enterprise"].cache_ttl_s == 900.0 and catalog.cache_ttl_of("acme", "pro") == 3600.0
    assert catalog.tiers["basic"].requests_per_day == 1000 and catalog.tiers["basic"].allows("openai")
    assert not catalog.tiers["basic"].allows("anthropic")
    assert catalog.tiers["pro"].requests_per_day == 10_000 and catalog.tiers["pro"].allows("anthropic")
    assert catalog.tiers["enterprise"].requests_per_day is None
    assert catalog.tenants["acme"].monthly_budget_usd == 500.0
    assert catalog.tier_of("acme", hint="free") == "pro"
    assert catalog.tier_of("stranger", hint="basic") == "basic"
    assert catalog.tier_of("stranger", default="enterprise") == "enterprise"
    assert catalog.region_of("globex") == "eu"
    assert math.isclose(catalog.routing.secondary_load_threshold, 0.8)


def test_tiers_left_out_keep_their_defaults() -> None:
    catalog = Catalog(providers={}, tiers={"free": TierSpec(requests_per_day=5)})
    assert catalog.tiers["free"].requests_per_day == 5
    assert catalog.tiers["pro"] == DEFAULT_TIERS["pro"]
    assert Catalog(providers={}).tiers == DEFAULT_TIERS
    assert catalog.with_base_url_override("http://127.0.0.1:1").tiers == catalog.tiers


def _catalog_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


PROVIDER = """
[providers.openai]
adapter = "openai"
base_url = "http://127.0.0.1:1/v1"

[[providers.openai.models]]
name = "m"
input_per_mtok = 0.1
output_per_mtok = 0.2
quality = 0.8
capabilities = ["chat"]
context_window = 1000
"""


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ("[tenant.bigco]\ntier = 'enterprise'\n", "tenant"),  # a misspelt table is an error, not ignored
        ("[tiers.basic]\nproviders = ['opneai']\n", "none of which is a provider"),
        ("[tenants.acme]\ntier = 'pro'\nmonthly_budget_usd = inf\n", "finite"),
        ("[providers.openai.timeouts]\nread_s = 0\n", "greater than 0"),
        ("[tiers.basic]\nproviders = ['openai', 'ollama']\n", None),  # an absent self-hosted one is fine
    ],
)
def test_catalog_files_that_cannot_mean_anything_are_refused(tmp_path: Path, extra: str, complaint: str | None) -> None:
    assert load_catalog(_catalog_file(tmp_path, PROVIDER)).providers["openai"].model("m") is not None
    if complaint is None:
        assert load_catalog(_catalog_file(tmp_path, PROVIDER + extra)).tier("basic").allows("openai")
        return
    with pytest.raises(ValueError, match=complaint):
        load_catalog(_catalog_file(tmp_path, PROVIDER + extra))


def test_a_price_of_inf_or_a_model_listed_twice_is_refused() -> None:
    model = {"name": "m", "input_per_mtok": 1.0, "output_per_mtok": 1.0, "quality": 0.5, "capabilities": ["chat"]}
    base = {"adapter": "openai", "base_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(ValueError, match="finite"):
        ProviderSpec.model_validate({**base, "models": [{**model, "context_window": 10, "input_per_mtok": math.inf}]})
    with pytest.raises(ValueError, match="listed twice"):
        ProviderSpec.model_validate({**base, "models": [{**model, "context_window": 10}] * 2})
