"""Deterministic routing simulations: what the cost-aware policy saves, and how overflow spreads.

``compare_policies`` routes one seeded workload (chat and embedding requests of mixed sizes, quality
floors, streaming and regions, all of one tier) three ways and totals the cost of each from the
usage it would report: the cost-aware policy, always-premium (the highest-quality model for the
request's kind, everywhere) and round-robin (every model of the request's kind in turn). It counts,
per policy, requests whose model is under the effective quality floor, lacks a needed capability
(streaming) or cannot hold the request (context window).

``overflow`` runs a warm-up below the threshold, then one simulated minute of chat traffic above the
primaries' capacity, through real
``ProviderLimiter`` buckets on a fake clock. Each provider's load is what its limiter says (the larger
of its rpm and tpm use in the last 60 s, or 1.0 when it cannot take the request right now). Every
request goes to the router's first choice, and down its fallback list when that limiter refuses (as
dispatch does on a rate-limit refusal). The report shows that secondaries only take traffic once
the primaries pass the threshold, backups take none, and no provider's grants in any 60 s window
exceed its rpm or tpm.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import cycle

from schemas.request import Message, Request
from streams.catalog import Catalog, ModelSpec
from streams.resilience.clock import FakeClock
from streams.resilience.token_bucket import ProviderLimiter
from streams.routing.cost import TokenEstimate, estimate_tokens
from streams.routing.policy import CostAwareRouter, needed_capabilities

_WORDS = [
    *("kafka", "stream", "partition", "offset", "consumer", "producer", "broker", "topic", "latency", "budget"),
    *("tenant", "route", "provider", "model", "token", "quality", "region", "schema", "replay", "window"),
    *("cache", "embed", "answer", "summarise", "explain", "compare"),
]


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(_WORDS)
        words.append(w)
        n += len(w) + 1
    return " ".join(words)[:chars]


@dataclass(frozen=True, slots=True)
class SimRequest:
    """A workload request and the output it will actually produce (the same for every policy)."""

    request: Request
    output_tokens: int


def workload(n: int = 2000, seed: int = 7, tier: str = "pro") -> list[SimRequest]:
    """``n`` seeded requests: 80% chat (20% streamed), 20% embeddings; mixed sizes, floors and regions."""
    rng = random.Random(seed)  # noqa: S311  # a seeded workload, not a secret
    out: list[SimRequest] = []
    for i in range(n):
        region = rng.choice([None, None, "us", "eu"])
        if rng.random() < 0.2:
            texts = [_text(rng, rng.choice([80, 400, 2000, 6000])) for _ in range(rng.randint(1, 8))]
            floor = rng.choice([None, 0.6, 0.7, 0.8])
            req = Request(
                request_id=f"sim-{i}",
                tenant="sim",
                tier=tier,  # type: ignore[arg-type]
                kind="embedding",
                input=texts,
                quality_floor=floor,
                region=region,
            )
            out.append(SimRequest(req, 0))
            continue
        size = rng.choices([200, 1_500, 8_000, 40_000, 560_000], weights=[50, 30, 14, 5, 1])[0]
        messages = [Message(role="user", content=_text(rng, size))]
        if rng.random() < 0.5:
            messages.insert(0, Message(role="system", content=_text(rng, 300)))
        max_tokens = rng.choice([None, 64, 256, 1024, 4096])
        floor = rng.choices([None, 0.5, 0.6, 0.7, 0.75, 0.85, 0.9], weights=[30, 10, 10, 20, 10, 10, 10])[0]
        req = Request(
            request_id=f"sim-{i}",
            tenant="sim",
            tier=tier,  # type: ignore[arg-type]
            messages=messages,
            max_tokens=max_tokens,
            quality_floor=floor,
            stream=rng.random() < 0.2,
            region=region,
        )
        out.append(SimRequest(req, rng.randint(1, max_tokens or 512)))
    return out


# -- policy comparison -------------------------------------------------------------------------------
@dataclass
class PolicyResult:
    """One policy's totals over a workload."""

    policy: str
    requests: int = 0
    cost_usd: float = 0.0
    floor_violations: int = 0
    capability_violations: int = 0
    context_violations: int = 0
    unrouted: int = 0
    providers: dict[str, int] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return self.floor_violations + self.capability_violations + self.context_violations


def _check(
    result: PolicyResult, sim: SimRequest, floor: float, est: TokenEstimate, provider: str, model: ModelSpec
) -> None:
    result.requests += 1
    result.providers[provider] = result.providers.get(provider, 0) + 1
    output = min(sim.output_tokens, sim.request.max_tokens or sim.output_tokens)
    result.cost_usd += model.cost_usd(est.input_tokens, output)
    if model.quality + 1e-9 < floor:
        result.floor_violations += 1
    if not all(c in model.capabilities for c in needed_capabilities(sim.request)):
        result.capability_violations += 1
    if est.context_tokens > model.context_window:
        result.context_violations += 1


def compare_policies(catalog: Catalog, sims: list[SimRequest], tier: str = "pro") -> list[PolicyResult]:
    """Cost and violations of cost-aware, always-premium and round-robin routing over ``sims``.

    Every policy keeps to the tier's provider allow-list. Costs and violations are summed over the requests
    that all three policies could route (so the costs compare like with like); each policy's ``unrouted``
    counts the requests it could not route.
    """
    router = CostAwareRouter(catalog)
    tier_spec = catalog.tier(tier)
    models = [(p, m) for p, spec in catalog.providers.items() if tier_spec.allows(p) for m in spec.models]
    kind_cap = {"chat": "chat", "embedding": "embeddings"}
    rr = {kind: [(p, m) for p, m in models if cap in m.capabilities] for kind, cap in kind_cap.items()}
    turns = {kind: cycle(pairs) for kind, pairs in rr.items() if pairs}
    premium = {
        kind: max(
            options,
            key=lambda pm: (pm[1].quality, -(pm[1].input_per_mtok + pm[1].output_per_mtok)),
        )
        for kind, cap in kind_cap.items()
        if (
            options := [
                (p, m) for p, m in models if cap in m.capabilities and (kind != "chat" or "streaming" in m.capabilities)
            ]
        )
    }
    results = {name: PolicyResult(name) for name in ("cost-aware", "always-premium", "round-robin")}
    for sim in sims:
        req = sim.request
        est = estimate_tokens(req, catalog.routing)
        default_floor = tier_spec.quality_floor if req.kind == "chat" else 0.0  # the router's rule: floors rate chat
        floor = req.quality_floor if req.quality_floor is not None else default_floor
        choices: dict[str, tuple[str, ModelSpec] | None] = {}
        try:
            plan = router.plan(req, tier=tier)
            choices["cost-aware"] = (plan.chosen.provider, plan.chosen.model)
        except Exception:  # noqa: BLE001  # counted, not fatal: a simulation reports what it could not route
            choices["cost-aware"] = None
        choices["always-premium"] = premium.get(req.kind)
        choices["round-robin"] = next(turns[req.kind]) if req.kind in turns else None
        for name, choice in choices.items():
            if choice is None:
                results[name].unrouted += 1
        if all(choice is not None for choice in choices.values()):
            for name, choice in choices.items():
                assert choice is not None
                _check(results[name], sim, floor, est, *choice)
    return list(results.values())


# -- overflow ----------------------------------------------------------------------------------------
@dataclass
class ProviderTraffic:
    """What one provider took during the overflow minute."""

    provider: str
    role: str
    rpm: int
    tpm: int
    requests: int = 0
    tokens: int = 0
    peak_requests_60s: int = 0
    peak_tokens_60s: int = 0
    first_at_s: float | None = None
    times: list[float] = field(default_factory=list, repr=False)
    sizes: list[int] = field(default_factory=list, repr=False)


@dataclass
class OverflowResult:
    """The overflow minute: demand, per-provider traffic and the invariants checked."""

    demand_requests: int
    demand_tokens: int
    seconds: float
    threshold: float
    providers: list[ProviderTraffic]
    refused_hops: int
    unserved: int
    secondary_before_threshold: int
    secondaries_first_at_s: float | None
    timeline: list[tuple[float, float, dict[str, int]]] = field(default_factory=list)

    @property
    def within_limits(self) -> bool:
        return all(p.peak_requests_60s <= p.rpm and p.peak_tokens_60s <= p.tpm for p in self.providers)

    @property
    def backup_requests(self) -> int:
        return sum(p.requests for p in self.providers if p.role == "backup")

    def as_dict(self) -> dict:
        return {
            "demand_requests": self.demand_requests,
            "demand_tokens": self.demand_tokens,
            "seconds": self.seconds,
            "threshold": self.threshold,
            "refused_hops": self.refused_hops,
            "unserved": self.unserved,
            "secondary_before_threshold": self.secondary_before_threshold,
            "secondaries_first_at_s": self.secondaries_first_at_s,
            "backup_requests": self.backup_requests,
            "timeline": [{"from_s": a, "to_s": b, "requests": c} for a, b, c in self.timeline],
            "within_limits": self.within_limits,
            "providers": [{k: v for k, v in asdict(p).items() if k not in ("times", "sizes")} for p in self.providers],
        }


def _peak_window(times: list[float], sizes: list[int], window: float = 60.0) -> tuple[int, int]:
    """Largest count and token sum of grants inside any ``window``-second span (times sorted)."""
    best_n = best_t = 0
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    for i, t in enumerate(times):
        j = bisect.bisect_right(times, t + window - 1e-9)
        best_n = max(best_n, j - i)
        best_t = max(best_t, prefix[j] - prefix[i])
    return best_n, best_t


def overflow(
    catalog: Catalog,
    *,
    demand: float = 1.25,
    seconds: float = 60.0,
    warmup_demand: float = 0.5,
    warmup_s: float = 20.0,
    mean_tokens: int = 150,
    slice_s: float = 10.0,
    seed: int = 11,
) -> OverflowResult:
    """``warmup_s`` at ``warmup_demand`` then ``seconds`` at ``demand`` x the primaries' rpm, on a fake clock.

    Requests are evenly spaced within each phase; each asks for ~``mean_tokens`` tokens (prompt plus
    64 output) at quality 0.7, tier pro.
    """
    rng = random.Random(seed)  # noqa: S311  # a seeded workload, not a secret
    clock = FakeClock(start=0.0)
    router = CostAwareRouter(catalog)
    threshold = catalog.routing.secondary_load_threshold
    limiters = {
        name: ProviderLimiter(name, rpm=spec.rpm, tpm=spec.tpm, burst=spec.burst, clock=clock)
        for name, spec in catalog.providers.items()
    }
    traffic = {
        name: ProviderTraffic(provider=name, role=spec.role, rpm=spec.rpm, tpm=spec.tpm)
        for name, spec in catalog.providers.items()
    }
    primaries = [
        n
        for n, s in catalog.providers.items()
        if s.role == "primary" and any("chat" in m.capabilities for m in s.models)
    ]
    per_s = sum(catalog.providers[n].rpm for n in primaries) / 60.0
    arrivals: list[float] = []
    for start, length, factor in ((0.0, warmup_s, warmup_demand), (warmup_s, seconds, demand)):
        n = int(per_s * factor * length)
        arrivals += [start + i * length / n for i in range(n)] if n else []

    def load_for(tokens: int) -> Callable[[str], float]:
        def load(name: str) -> float:
            lim = limiters[name]
            if lim.requests.wait_time(1.0) > 0 or lim.tokens.wait_time(float(tokens)) > 0:
                return 1.0
            return max(
                lim.requests.granted_in_window() / lim.requests.limit,
                lim.tokens.granted_in_window() / lim.tokens.limit,
            )

        return load

    refused = unserved = early_secondary = 0
    demand_tokens = 0
    first_secondary: float | None = None
    timeline: dict[int, Counter[str]] = {}
    text = _text(rng, 4 * mean_tokens)
    for i, t in enumerate(arrivals):
        clock.advance(t - clock.monotonic())
        prompt_tokens = max(8, int(rng.gauss(mean_tokens - 64, mean_tokens / 6)))
        req = Request(
            request_id=f"ovf-{i}",
            tenant="sim",
            messages=[Message(role="user", content=text[: 4 * (prompt_tokens - 6)])],
            max_tokens=64,
            quality_floor=0.7,
        )
        tokens = estimate_tokens(req, catalog.routing).total_tokens
        demand_tokens += tokens
        load = load_for(tokens)
        plan = router.plan(req, tier="pro", load=load)
        primary_load = min((load(n) for n in primaries), default=1.0)
        for cand in plan.ordered:
            lim = limiters[cand.provider]
            if lim.requests.wait_time(1.0) > 0 or lim.tokens.wait_time(float(tokens)) > 0:
                refused += 1
                continue
            lim.requests.try_acquire(1.0)
            lim.tokens.try_acquire(float(tokens))
            tr = traffic[cand.provider]
            tr.requests += 1
            tr.tokens += tokens
            tr.times.append(t)
            tr.sizes.append(tokens)
            timeline.setdefault(int(t // slice_s), Counter())[cand.provider] += 1
            if tr.first_at_s is None:
                tr.first_at_s = round(t, 3)
            if cand.role == "secondary":
                first_secondary = t if first_secondary is None else first_secondary
                if primary_load < threshold:
                    early_secondary += 1
            break
        else:
            unserved += 1
            timeline.setdefault(int(t // slice_s), Counter())["(unserved)"] += 1
    for tr in traffic.values():
        tr.peak_requests_60s, tr.peak_tokens_60s = _peak_window(tr.times, tr.sizes)
    return OverflowResult(
        demand_requests=len(arrivals),
        demand_tokens=demand_tokens,
        seconds=warmup_s + seconds,
        threshold=threshold,
        providers=list(traffic.values()),
        refused_hops=refused,
        unserved=unserved,
        secondary_before_threshold=early_secondary,
        secondaries_first_at_s=None if first_secondary is None else round(first_secondary, 3),
        timeline=[(k * slice_s, (k + 1) * slice_s, dict(timeline[k])) for k in sorted(timeline)],
    )


def role_counts(result: OverflowResult) -> Counter[str]:
    """Requests served per role in an overflow run."""
    counts: Counter[str] = Counter()
    for p in result.providers:
        counts[p.role] += p.requests
    return counts
