"""The cost-aware routing policy: the cheapest provider that is good enough, and why.

``CostAwareRouter`` is the pipeline's router (``plan``, ``choose``, ``candidates``,
``model_spec``) plus the tier, the providers' load and the region. For one request it:

1. estimates its tokens (``streams.routing.cost``) and takes its quality floor (the request's, else
   the tier's default);
2. keeps, per provider, the cheapest model with the capability (``chat`` + ``streaming`` for a
   streamed chat, ``embeddings``), a context window that holds the estimate (input + output; the
   largest input for embeddings) and quality at or above the floor; a provider is dropped when it
   was excluded (already failed this request), the tier does not allow it, or its circuit is open
   (``available`` is False);
3. activates roles: primaries; secondaries too once every eligible primary's load (0..1 of its
   rpm/tpm capacity, from ``load``) is at or above ``routing.secondary_load_threshold``, or when no
   primary can serve the request; backups only when no primary or secondary can (an outage, or a
   tier that allows nothing else);
4. ranks the active candidates: the requested model first (when ``request.model`` is set), then
   unsaturated before saturated (load >= 1), then the nearest region (the request's, else the
   tenant's; ``routing.region_proximity``), then the lowest estimated cost, ties broken by observed
   p95 latency (``LatencyTracker``; unknown is slowest), then primaries before secondaries, then
   lower load, then catalog order;
5. returns the first as the route; every other eligible candidate follows in ``fallback``: the rest
   of the active ones in rank order, then the inactive roles (secondaries, then backups).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.request import Request, Tier
from schemas.response import RouteInfo
from streams.catalog import Capability, Catalog, ModelSpec, ProviderSpec, Role
from streams.errors import NoProviderAvailable
from streams.routing.cost import TokenCounter, TokenEstimate, estimate_cost, estimate_tokens, format_usd
from streams.routing.latency import LatencyTracker

ROLE_RANK: dict[Role, int] = {"primary": 0, "secondary": 1, "backup": 2}
_COST_EPS = 1e-12
_OUTAGE_REASONS = ("circuit open", "excluded (already tried)")


def needed_capabilities(request: Request) -> tuple[Capability, ...]:
    """Catalog capabilities a request needs: embeddings, chat, or chat and streaming."""
    if request.kind == "embedding":
        return ("embeddings",)
    return ("chat", "streaming") if request.stream else ("chat",)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider and the model it would serve the request with, with everything ranking looks at."""

    provider: str
    model: ModelSpec
    role: Role
    region: str | None
    est_cost_usd: float
    region_rank: int
    p95_ms: float | None
    load: float
    requested: bool
    order: int

    @property
    def saturated(self) -> bool:
        """At or over its rpm/tpm capacity."""
        return self.load >= 1.0

    @property
    def label(self) -> str:
        """``provider:model``, the form of ``RouteInfo.fallback`` entries."""
        return f"{self.provider}:{self.model.name}"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A routing decision in full: the route, every candidate in order, and what it was based on."""

    route: RouteInfo
    ordered: tuple[Candidate, ...]
    tier: str
    floor: float
    estimate: TokenEstimate

    @property
    def chosen(self) -> Candidate:
        """The candidate the route names."""
        return self.ordered[0]

    @property
    def estimated_cost_usd(self) -> float:
        """The chosen route's estimated cost: what a budget reserves at admission."""
        return self.ordered[0].est_cost_usd


class CostAwareRouter:
    """Chooses the cheapest provider and model that meets a request's needs, tier, load and region."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        latency: LatencyTracker | None = None,
        counter: TokenCounter | None = None,
        default_tier: Tier = "pro",
    ) -> None:
        self._catalog = catalog
        self.latency = latency or LatencyTracker(catalog.routing.latency_window)
        self._counter = counter
        self._default_tier: Tier = default_tier
        self._order = {name: i for i, name in enumerate(catalog.providers)}

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def estimate(self, request: Request) -> TokenEstimate:
        """The request's token estimate, as routing and budgets use it."""
        return estimate_tokens(request, self._catalog.routing, self._counter)

    def model_spec(self, provider: str, model: str) -> ModelSpec | None:
        """Catalog entry of a provider's model, for pricing."""
        spec = self._catalog.providers.get(provider)
        return spec.model(model) if spec else None

    # -- the decision ------------------------------------------------------------------------------
    def plan(
        self,
        request: Request,
        *,
        tier: str | None = None,
        excluded: Iterable[str] = (),
        available: Callable[[str], bool] = lambda _: True,
        load: Callable[[str], float] = lambda _: 0.0,
        region: str | None = None,
    ) -> RoutePlan:
        """The full decision; raises ``NoProviderAvailable`` (saying why) when nothing can serve it."""
        tier_name = tier or self._catalog.tier_of(request.tenant, request.tier, self._default_tier)
        tier_spec = self._catalog.tier(tier_name)
        # A tier's default floor rates chat models; an embedding request is held only to a floor it sets.
        default_floor = tier_spec.quality_floor if request.kind == "chat" else 0.0
        floor = request.quality_floor if request.quality_floor is not None else default_floor
        want_region = request.region or region or self._catalog.region_of(request.tenant)
        est = self.estimate(request)
        caps = needed_capabilities(request)
        skip = set(excluded)

        eligible: list[Candidate] = []
        rejected: dict[str, str] = {}
        for name, spec in self._catalog.providers.items():
            if name in skip:
                rejected[name] = "excluded (already tried)"
            elif not tier_spec.allows(name):
                rejected[name] = f"not allowed for tier {tier_name}"
            elif not available(name):
                rejected[name] = "circuit open"
            else:
                model, why = self._pick_model(spec, request, caps, est, floor)
                if model is None:
                    rejected[name] = why
                else:
                    eligible.append(self._candidate(name, spec, model, request, est, want_region, load))
        if not eligible:
            detail = "; ".join(f"{p}: {why}" for p, why in rejected.items()) or "the catalog is empty"
            raise NoProviderAvailable(
                f"no provider can serve this {request.kind} request (tier {tier_name}, quality >= {floor:g}, "
                f"~{est.context_tokens} context tokens): {detail}"
            )

        active, inactive, mode = self._activate(eligible, rejected)
        ordered = sorted(active, key=self._rank_key(request)) + sorted(
            inactive, key=lambda c: (ROLE_RANK[c.role], *self._rank_key(request)(c))
        )
        chosen = ordered[0]
        reason = self._reason(chosen, sorted(active, key=self._rank_key(request)), floor, want_region, mode)
        route = RouteInfo(
            provider=chosen.provider,
            model=chosen.model.name,
            reason=reason,
            fallback=[c.label for c in ordered[1:]],
        )
        return RoutePlan(route=route, ordered=tuple(ordered), tier=tier_name, floor=floor, estimate=est)

    def choose(
        self,
        request: Request,
        *,
        tier: str | None = None,
        excluded: Iterable[str] = (),
        available: Callable[[str], bool] = lambda _: True,
        load: Callable[[str], float] = lambda _: 0.0,
        region: str | None = None,
    ) -> RouteInfo:
        """The route for a request (``tier`` None: the tenant's configured tier, else the request's hint)."""
        return self.plan(request, tier=tier, excluded=excluded, available=available, load=load, region=region).route

    def candidates(
        self,
        request: Request,
        *,
        tier: str | None = None,
        excluded: Iterable[str] = (),
        available: Callable[[str], bool] = lambda _: True,
        load: Callable[[str], float] = lambda _: 0.0,
        region: str | None = None,
    ) -> list[tuple[str, ModelSpec]]:
        """Every (provider, model) that can serve the request, in preference order (empty: none)."""
        try:
            plan = self.plan(request, tier=tier, excluded=excluded, available=available, load=load, region=region)
        except NoProviderAvailable:
            return []
        return [(c.provider, c.model) for c in plan.ordered]

    # -- the steps ---------------------------------------------------------------------------------
    @staticmethod
    def _pick_model(
        spec: ProviderSpec, request: Request, caps: tuple[Capability, ...], est: TokenEstimate, floor: float
    ) -> tuple[ModelSpec | None, str]:
        capable = [m for m in spec.models if all(c in m.capabilities for c in caps)]
        if not capable:
            return None, f"no model with {'+'.join(caps)}"
        fits = [m for m in capable if est.context_tokens <= m.context_window]
        if not fits:
            widest = max(m.context_window for m in capable)
            return None, f"~{est.context_tokens} tokens exceed the context window ({widest})"
        good = [m for m in fits if m.quality + 1e-9 >= floor]
        if not good:
            best = max(m.quality for m in fits)
            return None, f"best quality {best:g} is under the floor {floor:g}"
        if request.model:
            preferred = next((m for m in good if m.name == request.model), None)
            if preferred is not None:
                return preferred, ""
        return min(good, key=lambda m: (estimate_cost(m, est), -m.quality, m.name)), ""

    def _candidate(
        self,
        name: str,
        spec: ProviderSpec,
        model: ModelSpec,
        request: Request,
        est: TokenEstimate,
        want_region: str | None,
        load: Callable[[str], float],
    ) -> Candidate:
        return Candidate(
            provider=name,
            model=model,
            role=spec.role,
            region=spec.region,
            est_cost_usd=estimate_cost(model, est),
            region_rank=self._region_rank(want_region, spec.region),
            p95_ms=self.latency.p95(name, model.name),
            load=max(0.0, float(load(name))),
            requested=request.model is not None and model.name == request.model,
            order=self._order[name],
        )

    def _region_rank(self, want: str | None, have: str | None) -> int:
        """0 for the same region (or when the request declares none, or the provider runs beside the
        gateway: region "local" is as close as it gets), then by configured proximity."""
        if want is None or have in (want, "local"):
            return 0
        near = self._catalog.routing.region_proximity.get(want, [])
        return 1 + near.index(have) if have in near else 1 + len(near)

    def _activate(
        self, eligible: list[Candidate], rejected: dict[str, str]
    ) -> tuple[list[Candidate], list[Candidate], str | None]:
        """Split eligible candidates into the active pool and the rest, and say why when it is not plain."""
        by_role: dict[Role, list[Candidate]] = {"primary": [], "secondary": [], "backup": []}
        for c in eligible:
            by_role[c.role].append(c)
        prim, sec, back = by_role["primary"], by_role["secondary"], by_role["backup"]
        threshold = self._catalog.routing.secondary_load_threshold
        if prim:
            if sec and all(c.load >= threshold for c in prim):
                loads = ", ".join(f"{c.provider} {c.load:.0%}" for c in prim)
                return prim + sec, back, f"secondaries active: primaries at >= {threshold:.0%} load ({loads})"
            return prim, sec + back, None
        if sec:
            return sec, back, f"no primary can serve it ({self._why_role('primary', rejected)})"
        why = self._why_role(None, rejected)
        down = any(
            rejected.get(p) in _OUTAGE_REASONS for p, spec in self._catalog.providers.items() if spec.role != "backup"
        )
        return back, [], f"{'outage: ' if down else ''}no primary or secondary can serve it ({why})"

    def _why_role(self, role: Role | None, rejected: dict[str, str]) -> str:
        roles = {role} if role else {"primary", "secondary"}
        parts = [f"{p}: {why}" for p, why in rejected.items() if self._catalog.providers[p].role in roles]
        return "; ".join(parts) or f"no {' or '.join(sorted(roles))} in the catalog"

    @staticmethod
    def _rank_key(request: Request) -> Callable[[Candidate], tuple]:
        def key(c: Candidate) -> tuple:
            return (
                bool(request.model) and not c.requested,
                c.saturated,
                c.region_rank,
                round(c.est_cost_usd, 12),
                c.p95_ms if c.p95_ms is not None else math.inf,
                ROLE_RANK[c.role],
                c.load,
                c.order,
            )

        return key

    @staticmethod
    def _reason(
        chosen: Candidate,
        active: list[Candidate],
        floor: float,
        want_region: str | None,
        mode: str | None,
    ) -> str:
        usd = format_usd(chosen.est_cost_usd)
        if chosen.requested:
            text = f"requested model on {chosen.role} {chosen.provider} meeting quality {floor:g}: "
        elif want_region is not None:
            where = "in" if chosen.region_rank == 0 else "nearest to"
            text = f"cheapest {chosen.role} {where} region {want_region} meeting quality {floor:g}: "
        else:
            text = f"cheapest {chosen.role} meeting quality {floor:g}: "
        text += f"{chosen.model.name} at {usd} est."
        runner = active[1] if len(active) > 1 else None
        if (
            runner is not None
            and runner.requested == chosen.requested
            and runner.saturated == chosen.saturated
            and runner.region_rank == chosen.region_rank
            and abs(runner.est_cost_usd - chosen.est_cost_usd) <= _COST_EPS
        ):
            if chosen.p95_ms is not None and chosen.p95_ms != runner.p95_ms:
                theirs = f"{runner.p95_ms:.0f} ms" if runner.p95_ms is not None else "unknown"
                text += f" Tie on cost with {runner.label} broken by p95 latency {chosen.p95_ms:.0f} ms vs {theirs}."
            elif chosen.role != runner.role:
                text += f" Tie on cost with {runner.label} broken by role ({chosen.role} first)."
            elif chosen.load != runner.load:
                text += f" Tie on cost with {runner.label} broken by load ({chosen.load:.0%} vs {runner.load:.0%})."
            else:
                text += f" Tie on cost with {runner.label} broken by catalog order."
        if chosen.saturated:
            text += f" Every candidate is at capacity ({chosen.provider} {chosen.load:.0%})."
        if mode:
            text += f" {mode[0].upper()}{mode[1:]}."
        return text
