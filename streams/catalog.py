"""The provider catalog: providers, their models and prices, limits and roles, plus tiers, tenants
and routing thresholds, read from TOML.

``[providers.*]`` is what aifleet may route to. ``[tiers.*]`` says what each tier may use (daily request
quota, default quality floor, provider allow-list, default monthly budget); tiers the file leaves out
keep the defaults of ``DEFAULT_TIERS``. ``[tenants.*]`` pins a tenant's tier, monthly budget and region.
``[routing]`` holds the cost-aware policy's thresholds and the token-estimate parameters.
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.request import Tier

Capability = Literal["chat", "embeddings", "streaming", "tools"]
Role = Literal["primary", "secondary", "backup"]


class _Frozen(BaseModel):
    # inf passes ge=0 and would turn a price or budget into an OverflowError at admission; NaN fails every bound
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Timeouts(_Frozen):
    """Per-provider HTTP timeouts in seconds."""

    connect_s: float = Field(default=5.0, gt=0)
    read_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=120.0, gt=0)


class ModelSpec(_Frozen):
    """One model a provider serves, with its list prices (USD per million tokens)."""

    name: str
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    quality: float = Field(ge=0, le=1)
    capabilities: list[Capability]
    context_window: int = Field(gt=0)

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """The exact cost of a call that used these tokens."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1_000_000


class ProviderSpec(_Frozen):
    """A provider: how to reach it, what it serves, and the limits it imposes."""

    adapter: str
    base_url: str
    emulator_path: str = "/v1"
    key: str | None = None
    role: Role = "primary"
    region: str | None = None
    rpm: int = Field(default=10_000, gt=0)
    tpm: int = Field(default=2_000_000, gt=0)
    burst: int = Field(default=100, gt=0)
    timeouts: Timeouts = Timeouts()
    api_version: str | None = None
    models: list[ModelSpec]

    @model_validator(mode="after")
    def _model_names_unique(self) -> Self:
        names = [m.name for m in self.models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"models listed twice: {twice} (the router and the bill would each take one)")
        return self

    def model(self, name: str) -> ModelSpec | None:
        """The model of that name, if this provider serves it."""
        return next((m for m in self.models if m.name == name), None)


ALL_PROVIDERS = "*"
"""In a tier's ``providers`` allow-list: every provider of the catalog."""


class TierSpec(_Frozen):
    """What a tier may use: requests per UTC day, the default quality floor, which providers, what budget."""

    requests_per_day: int | None = Field(default=None, ge=0, description="None: unlimited.")
    quality_floor: float = Field(default=0.0, ge=0, le=1, description="Used when a request sets none.")
    providers: list[str] = Field(
        default_factory=lambda: [ALL_PROVIDERS],
        description="Allow-list; '*' = all. Names absent from the catalog are ignored (optional self-hosted ones).",
    )
    monthly_budget_usd: float | None = Field(
        default=None, ge=0, description="Budget of tenants of this tier that set none (None: unlimited)."
    )

    cache_ttl_s: float = Field(default=3_600.0, ge=0, description="Exact/semantic cache TTL; 0 turns caching off.")

    def allows(self, provider: str) -> bool:
        """Whether this tier may send requests to ``provider``."""
        return ALL_PROVIDERS in self.providers or provider in self.providers


TIER_ORDER: tuple[Tier, ...] = ("free", "basic", "pro", "enterprise")
"""Tiers from least to most entitled."""

LOCAL_PROVIDERS = ["local", "vllm", "ollama"]
"""Self-hosted providers (no per-token bill) that every tier may use."""

DEFAULT_TIERS: dict[Tier, TierSpec] = {
    "free": TierSpec(requests_per_day=100, quality_floor=0.5, providers=list(LOCAL_PROVIDERS), cache_ttl_s=86_400.0),
    "basic": TierSpec(requests_per_day=1_000, quality_floor=0.6, providers=["openai", *LOCAL_PROVIDERS]),
    "pro": TierSpec(requests_per_day=10_000, quality_floor=0.7),
    "enterprise": TierSpec(requests_per_day=None, quality_floor=0.8, cache_ttl_s=900.0),
}
"""The shipped tiers; ``[tiers.<name>]`` in the TOML replaces one as a whole."""


class TenantSpec(_Frozen):
    """One tenant's pinned settings; tenants not listed get ``Settings.default_tier`` and its defaults."""

    tier: Tier
    monthly_budget_usd: float | None = Field(default=None, ge=0, description="None: the tier's default.")
    region: str | None = Field(default=None, description="Preferred region when a request declares none.")
    requests_per_day: int | None = Field(default=None, ge=0, description="None: the tier's quota.")
    cache_ttl_s: float | None = Field(default=None, ge=0, description="None: the tier's cache TTL.")


class RoutingSpec(_Frozen):
    """Thresholds of the cost-aware policy and the parameters of the pre-dispatch token estimate."""

    secondary_load_threshold: float = Field(default=0.8, ge=0, le=1)
    default_output_tokens: int = Field(default=256, ge=0, description="Output estimate when max_tokens is unset.")
    chars_per_token: float = Field(default=4.0, gt=0)
    tokens_per_message: int = Field(default=3, ge=0, description="Chat framing per message (role, separators).")
    reply_priming_tokens: int = Field(default=3, ge=0, description="Tokens that prime the assistant's reply.")
    latency_window: int = Field(default=512, ge=1, description="Latency samples kept per provider and model.")
    reservation_ttl_s: float = Field(default=3_600.0, gt=0, description="Unsettled budget reservations expire.")
    region_proximity: dict[str, list[str]] = Field(
        default_factory=dict, description="Per request region, the other regions from nearest to farthest."
    )


class Catalog(_Frozen):
    """Every provider aifleet may route to, by name, and the tiers, tenants and thresholds of routing."""

    prices_read: str | None = None
    providers: dict[str, ProviderSpec]
    tiers: dict[Tier, TierSpec] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)
    routing: RoutingSpec = RoutingSpec()
    cache_scopes: dict[str, list[str]] = Field(
        default_factory=dict, description="Shared cache scopes: name -> tenants that may share cached answers."
    )

    @model_validator(mode="after")
    def _every_tier_defined(self) -> Self:
        missing = {name: spec for name, spec in DEFAULT_TIERS.items() if name not in self.tiers}
        if missing:
            object.__setattr__(self, "tiers", {**missing, **self.tiers})
        return self

    def tier(self, name: str) -> TierSpec:
        """The spec of tier ``name`` (KeyError for a name that is not a tier)."""
        return self.tiers[name]  # type: ignore[index]

    def tier_of(self, tenant: str, hint: Tier | None = None, default: Tier = "pro") -> Tier:
        """A tenant's tier: its configured one; for an unlisted tenant ``default``, or a lower tier it asks for.

        A request's tier hint can lower an unlisted tenant's tier (to test the free tier's limits, say)
        but never raise it: a tenant that declared itself enterprise would otherwise lift its own quota.
        """
        spec = self.tenants.get(tenant)
        if spec is not None:
            return spec.tier
        if hint is not None and TIER_ORDER.index(hint) < TIER_ORDER.index(default):
            return hint
        return default

    def monthly_budget_of(self, tenant: str, tier: str) -> float | None:
        """USD per calendar month for a tenant: its own, else its tier's default (None: unlimited)."""
        spec = self.tenants.get(tenant)
        if spec is not None and spec.monthly_budget_usd is not None:
            return spec.monthly_budget_usd
        return self.tier(tier).monthly_budget_usd

    def cache_ttl_of(self, tenant: str, tier: Tier) -> float:
        """How long a tenant's cached answers live (0: not cached)."""
        spec = self.tenants.get(tenant)
        if spec is not None and spec.cache_ttl_s is not None:
            return spec.cache_ttl_s
        return self.tier(tier).cache_ttl_s

    def cache_scope_of(self, tenant: str) -> str:
        """The scope a tenant's cached answers live in: its own name, unless a shared scope lists it."""
        for name, members in self.cache_scopes.items():
            if tenant in members:
                return f"shared:{name}"
        return tenant

    def region_of(self, tenant: str) -> str | None:
        """A tenant's configured region, if any."""
        spec = self.tenants.get(tenant)
        return spec.region if spec else None

    def with_base_url_override(self, emulator_url: str) -> Catalog:
        """The same catalog with every provider pointed at the emulator (no keys set)."""
        providers = {
            name: spec.model_copy(update={"base_url": f"{emulator_url.rstrip('/')}/{name}{spec.emulator_path}"})
            for name, spec in self.providers.items()
        }
        return self.model_copy(update={"providers": providers})


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog TOML file.

    Every table is validated, unknown ones included (a misspelt ``[tenant.acme]`` is an error, not a tenant
    silently left on the default tier), and a tier's allow-list must name at least one provider of the
    catalog (or ``*``): one that names none would leave every request of the tier without a route.
    """
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    catalog = Catalog.model_validate({"providers": {}, **raw})
    for name in raw.get("tiers", {}):
        allowed = catalog.tier(name).providers
        if ALL_PROVIDERS not in allowed and not any(p in catalog.providers for p in allowed):
            raise ValueError(
                f"{path}: tier {name!r} allows {allowed}, none of which is a provider of this catalog "
                f"({sorted(catalog.providers)})"
            )
    return catalog


@lru_cache(maxsize=8)
def cached_catalog(path: Path) -> Catalog:
    """``load_catalog`` once per path per process."""
    return load_catalog(path)
