"""Routing: which provider and model serve a request, and what to fall back on.

This is the foundation's policy: the first available provider (primaries, then secondaries,
then backups, in catalog order) that has the capability the request needs. The cost-aware
policy replaces ``choose`` without changing its signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from schemas.request import Request
from schemas.response import RouteInfo
from streams.catalog import Capability, Catalog, ModelSpec, ProviderSpec
from streams.errors import NoProviderAvailable

_ROLE_ORDER = {"primary": 0, "secondary": 1, "backup": 2}


def needed_capability(request: Request) -> Capability:
    """The catalog capability a request needs."""
    return "embeddings" if request.kind == "embedding" else "chat"


class Router:
    """Chooses a provider and model for a request, skipping excluded and unavailable providers."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._ordered = sorted(catalog.providers.items(), key=lambda kv: _ROLE_ORDER[kv[1].role])

    def _model_for(self, spec: ProviderSpec, request: Request) -> ModelSpec | None:
        cap = needed_capability(request)
        capable = [
            m
            for m in spec.models
            if cap in m.capabilities and (not request.stream or "streaming" in m.capabilities or cap == "embeddings")
        ]
        if request.model:
            preferred = next((m for m in capable if m.name == request.model), None)
            if preferred is not None:
                return preferred
        floor = request.quality_floor or 0.0
        good = [m for m in capable if m.quality >= floor]
        return min(good, key=lambda m: m.input_per_mtok + m.output_per_mtok) if good else None

    def candidates(
        self, request: Request, *, excluded: Iterable[str] = (), available: Callable[[str], bool] = lambda _: True
    ) -> list[tuple[str, ModelSpec]]:
        """Every (provider, model) that can serve the request, in preference order."""
        skip = set(excluded)
        out = []
        for name, spec in self._ordered:
            if name in skip or not available(name):
                continue
            model = self._model_for(spec, request)
            if model is not None:
                out.append((name, model))
        return out

    def choose(
        self, request: Request, *, excluded: Iterable[str] = (), available: Callable[[str], bool] = lambda _: True
    ) -> RouteInfo:
        """The route for a request; raises NoProviderAvailable when nothing can serve it."""
        chain = self.candidates(request, excluded=excluded, available=available)
        if not chain:
            raise NoProviderAvailable(f"no available provider can serve a {request.kind} request")
        (provider, model), rest = chain[0], chain[1:]
        role = self._catalog.providers[provider].role
        return RouteInfo(
            provider=provider,
            model=model.name,
            reason=f"first available {role} provider with {needed_capability(request)}",
            fallback=[f"{p}:{m.name}" for p, m in rest],
        )

    def model_spec(self, provider: str, model: str) -> ModelSpec | None:
        """Catalog entry of a provider's model, for pricing."""
        spec = self._catalog.providers.get(provider)
        return spec.model(model) if spec else None
