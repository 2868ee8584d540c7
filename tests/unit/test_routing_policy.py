"""CostAwareRouter: every routing rule, on small hand-built catalogs and on the shipped one."""

from __future__ import annotations

import pytest

from schemas.request import Message, Request
from streams.catalog import Catalog, ProviderSpec, RoutingSpec, TierSpec, load_catalog
from streams.errors import NoProviderAvailable
from streams.routing.latency import LatencyTracker
from streams.routing.policy import CostAwareRouter
from streams.settings import DEFAULT_CONFIG_FILE

CHAT = ["chat", "streaming", "tools"]


def model(name: str, inp: float, out: float, quality: float, caps: list | None = None, ctx: int = 128_000) -> dict:
    return {
        "name": name,
        "input_per_mtok": inp,
        "output_per_mtok": out,
        "quality": quality,
        "capabilities": caps or CHAT,
        "context_window": ctx,
    }


def provider(role: str, *models: dict, region: str = "us") -> ProviderSpec:
    return ProviderSpec.model_validate(
        {"adapter": "openai", "base_url": "http://x/v1", "role": role, "region": region, "models": list(models)}
    )


def with_provider(catalog: Catalog, name: str, spec: ProviderSpec) -> Catalog:
    return catalog.model_copy(update={"providers": {**catalog.providers, name: spec}})


def chat(text: str = "Explain Kafka consumer groups in one line.", **kw: object) -> Request:
    return Request(request_id="r1", tenant="t1", messages=[Message(role="user", content=text)], **kw)


def embed(*texts: str, **kw: object) -> Request:
    return Request(request_id="e1", tenant="t1", kind="embedding", input=list(texts), **kw)


@pytest.fixture
def catalog() -> Catalog:
    """One cheap and one good primary, a cheaper secondary in eu, a pricier secondary, a free backup."""
    return Catalog(
        providers={
            "p_cheap": provider("primary", model("mini", 0.15, 0.60, 0.70), model("emb", 0.02, 0, 0.8, ["embeddings"])),
            "p_good": provider("primary", model("big", 2.50, 10.0, 0.90)),
            "s_eu": provider("secondary", model("eu-mini", 0.10, 0.40, 0.72), region="eu"),
            "s_us": provider("secondary", model("haiku", 0.80, 4.0, 0.75)),
            "b_free": provider("backup", model("llama", 0.0, 0.0, 0.75), region="local"),
        },
        routing=RoutingSpec(region_proximity={"eu": ["local", "us"]}),
    )


def test_cheapest_primary_meeting_the_tier_floor_and_reason_text(catalog: Catalog) -> None:
    route = CostAwareRouter(catalog).choose(chat(max_tokens=20), tier="pro")
    assert (route.provider, route.model) == ("p_cheap", "mini")
    # input: ceil(43/4)=11 + 3 per message + 3 priming = 17; output 20 -> 17*0.15e-6 + 20*0.6e-6
    assert route.reason == "cheapest primary meeting quality 0.7: mini at $0.000015 est."
    # the rest in order: the other eligible primary, then inactive secondaries (cheapest first), then backups
    assert route.fallback == ["p_good:big", "s_eu:eu-mini", "s_us:haiku", "b_free:llama"]


def test_quality_floor_request_overrides_tier_default(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    assert router.choose(chat(quality_floor=0.85), tier="pro").model == "big"
    assert router.choose(chat(), tier="enterprise").model == "big"  # enterprise default floor 0.8
    assert router.choose(chat(quality_floor=0.5), tier="enterprise").model == "mini"


def test_floor_that_only_a_secondary_meets_activates_it(catalog: Catalog) -> None:
    cat = catalog.model_copy(
        update={"providers": {**catalog.providers, "s_top": provider("secondary", model("top", 3, 15, 0.95))}}
    )
    route = CostAwareRouter(cat).choose(chat(quality_floor=0.93), tier="pro")
    assert route.provider == "s_top"
    assert "No primary can serve it" in route.reason
    with pytest.raises(NoProviderAvailable, match=r"under the floor 0\.99"):
        CostAwareRouter(cat).choose(chat(quality_floor=0.99), tier="pro")


def test_capability_embeddings_and_streaming(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    route = router.choose(embed("a", "b"), tier="pro")
    assert (route.provider, route.model) == ("p_cheap", "emb")
    assert route.fallback == []  # nobody else embeds
    no_stream = catalog.model_copy(
        update={
            "providers": {
                **catalog.providers,
                "p_nostream": provider("primary", model("cheapest", 0.01, 0.01, 0.8, ["chat"])),
            }
        }
    )
    router = CostAwareRouter(no_stream)
    assert router.choose(chat(), tier="pro").provider == "p_nostream"
    streamed = router.choose(chat(stream=True), tier="pro")
    assert streamed.provider == "p_cheap"
    assert "p_nostream:cheapest" not in streamed.fallback


def test_context_window_counts_input_and_max_tokens(catalog: Catalog) -> None:
    small = catalog.model_copy(
        update={
            "providers": {**catalog.providers, "p_cheap": provider("primary", model("mini", 0.15, 0.6, 0.7, ctx=1000))}
        }
    )
    router = CostAwareRouter(small)
    fits = chat("x" * 3000, max_tokens=200)  # 750 + 6 + 200 = 956 tokens
    assert router.choose(fits, tier="pro").model == "mini"
    too_big = chat("x" * 3000, max_tokens=300)  # 1056 tokens > 1000
    assert router.choose(too_big, tier="pro").model == "big"
    assert router.estimate(too_big).context_tokens == 1056


def test_tier_allow_list(catalog: Catalog) -> None:
    cat = catalog.model_copy(
        update={
            "tiers": {
                **catalog.tiers,
                "free": TierSpec(requests_per_day=100, quality_floor=0.5, providers=["b_free"]),
                "basic": TierSpec(quality_floor=0.6, providers=["p_good", "b_free"]),
            }
        }
    )
    router = CostAwareRouter(cat)
    free = router.choose(chat(), tier="free")
    assert free.provider == "b_free" and free.fallback == []
    assert "not allowed for tier free" in free.reason and "outage" not in free.reason.lower()
    basic = router.choose(chat(), tier="basic", load=lambda _: 0.95)
    assert basic.provider == "p_good"
    assert {f.split(":")[0] for f in basic.fallback} == {"b_free"}
    with pytest.raises(NoProviderAvailable, match="not allowed for tier free"):
        router.choose(embed("x"), tier="free")


def test_open_circuit_skips_a_provider(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    route = router.choose(chat(), tier="pro", available=lambda p: p != "p_cheap")
    assert route.provider == "p_good"
    assert all(not f.startswith("p_cheap") for f in route.fallback)
    route = router.choose(chat(), tier="pro", available=lambda p: not p.startswith("p_"))
    assert route.provider == "s_eu"
    assert "p_cheap: circuit open" in route.reason


def test_secondaries_activate_only_past_the_load_threshold(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    below = router.choose(chat(), tier="pro", load=lambda p: 0.79 if p.startswith("p_") else 0.0)
    assert below.provider == "p_cheap"  # s_eu is cheaper but not active yet
    at = router.choose(chat(), tier="pro", load=lambda p: 0.8 if p.startswith("p_") else 0.0)
    assert at.provider == "s_eu"
    assert "Secondaries active: primaries at >= 80% load" in at.reason
    # one primary with headroom keeps secondaries off
    mixed = router.choose(chat(), tier="pro", load=lambda p: {"p_cheap": 0.95, "p_good": 0.5}.get(p, 0.0))
    assert mixed.provider == "p_cheap"
    # the threshold is configurable
    lower = catalog.model_copy(update={"routing": RoutingSpec(secondary_load_threshold=0.5)})
    assert CostAwareRouter(lower).choose(chat(), tier="pro", load=lambda p: 0.6).provider == "s_eu"


def test_saturated_providers_rank_last_in_the_active_pool(catalog: Catalog) -> None:
    route = CostAwareRouter(catalog).choose(chat(), tier="pro", load=lambda p: 1.0 if p in ("p_cheap", "s_eu") else 0.9)
    assert route.provider == "s_us"
    # the saturated ones follow the others, cheapest first
    assert route.fallback[:3] == ["p_good:big", "s_eu:eu-mini", "p_cheap:mini"]


def test_backups_only_in_an_outage(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    # the backup is free, but even every primary and secondary at capacity does not activate it
    busy = router.choose(chat(), tier="pro", load=lambda p: 1.0)
    assert busy.provider != "b_free"
    assert busy.fallback[-1] == "b_free:llama"
    outage = router.choose(chat(), tier="pro", available=lambda p: p == "b_free")
    assert outage.provider == "b_free"
    assert "Outage: no primary or secondary can serve it" in outage.reason
    excluded = router.choose(chat(), tier="pro", excluded=["p_cheap", "p_good", "s_eu", "s_us"])
    assert excluded.provider == "b_free"


def test_region_preference_within_the_active_pool(catalog: Catalog) -> None:
    two_regions = catalog.model_copy(
        update={
            "providers": {**catalog.providers, "p_eu": provider("primary", model("eu-big", 2.5, 10, 0.9), region="eu")}
        }
    )
    router = CostAwareRouter(two_regions)
    assert router.choose(chat(), tier="pro").provider == "p_cheap"
    eu = router.choose(chat(region="eu"), tier="pro")
    assert eu.provider == "p_eu"  # same region wins over price among active candidates
    assert "in region eu" in eu.reason
    # the tenant's region applies when the request declares none; the request's wins over it
    assert router.choose(chat(), tier="pro", region="eu").provider == "p_eu"
    assert router.choose(chat(region="us"), tier="pro", region="eu").provider == "p_cheap"
    # proximity: for eu, "local" is nearer than "us"
    assert router._region_rank("eu", "local") < router._region_rank("eu", "us") < router._region_rank("eu", "ap")


def test_cost_tie_broken_by_p95_latency(catalog: Catalog) -> None:
    twins = Catalog(
        providers={
            "a": provider("primary", model("m", 0.15, 0.6, 0.7)),
            "b": provider("primary", model("m", 0.15, 0.6, 0.7)),
        }
    )
    latency = LatencyTracker(window=100)
    router = CostAwareRouter(twins, latency=latency)
    assert router.choose(chat(), tier="pro").provider == "a"  # no data: catalog order
    for i in range(100):
        latency.observe("a", 300 + i, model="m")
        latency.observe("b", 100 + (900 if i == 99 else i), model="m")  # one outlier: p95 still low
    assert latency.p95("a", "m") == 394 and latency.p95("b", "m") == 194
    route = router.choose(chat(), tier="pro")
    assert route.provider == "b"
    assert "broken by p95 latency 194 ms vs 394 ms" in route.reason
    assert route.fallback == ["a:m"]


def test_requested_model_is_preferred_when_eligible(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    assert router.choose(chat(model="big"), tier="pro").model == "big"
    assert router.choose(chat(model="big"), tier="pro").reason.startswith("requested model on primary p_good")
    assert router.choose(chat(model="unknown-model"), tier="pro").model == "mini"


def test_candidates_and_model_spec_match_the_route(catalog: Catalog) -> None:
    router = CostAwareRouter(catalog)
    route = router.choose(chat(), tier="pro")
    cands = router.candidates(chat(), tier="pro")
    assert [f"{p}:{m.name}" for p, m in cands] == [f"{route.provider}:{route.model}", *route.fallback]
    assert router.candidates(chat(quality_floor=1.0), tier="pro") == []
    spec = router.model_spec("p_cheap", "mini")
    assert spec is not None and spec.input_per_mtok == 0.15
    assert router.model_spec("nope", "mini") is None


def test_shipped_catalog_routes_by_tier() -> None:
    catalog = load_catalog(DEFAULT_CONFIG_FILE)
    local = provider("backup", model("all-minilm-l6-v2", 0, 0, 0.6, ["embeddings"], ctx=256), region="local")
    catalog = catalog.model_copy(update={"providers": {**catalog.providers, "local": local}})
    router = CostAwareRouter(catalog)
    assert router.choose(chat(), tier="pro").model == "gpt-4o-mini"
    assert router.choose(chat(), tier="enterprise").model == "gpt-4o"
    free_chat = router.choose(chat(), tier="free")
    assert free_chat.provider in {"vllm", "ollama"}
    assert router.choose(embed("hello"), tier="free").model in {"all-minilm-l6-v2", "nomic-embed-text"}
    # the tenant's configured tier wins over the request's hint
    demo = Request(request_id="d", tenant="demo", tier="enterprise", messages=[Message(role="user", content="hi")])
    assert router.plan(demo).tier == "free"
    assert router.choose(demo).provider in {"vllm", "ollama"}
