"""The provider catalog: providers, their models and prices, limits and roles, read from TOML."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Capability = Literal["chat", "embeddings", "streaming", "tools"]
Role = Literal["primary", "secondary", "backup"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Timeouts(_Frozen):
    """Per-provider HTTP timeouts in seconds."""

    connect_s: float = 5.0
    read_s: float = 60.0
    total_s: float = 120.0


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

    def model(self, name: str) -> ModelSpec | None:
        """The model of that name, if this provider serves it."""
        return next((m for m in self.models if m.name == name), None)


class Catalog(_Frozen):
    """Every provider aifleet may route to, by name."""

    prices_read: str | None = None
    providers: dict[str, ProviderSpec]

    def with_base_url_override(self, emulator_url: str) -> Catalog:
        """The same catalog with every provider pointed at the emulator (no keys set)."""
        providers = {
            name: spec.model_copy(update={"base_url": f"{emulator_url.rstrip('/')}/{name}{spec.emulator_path}"})
            for name, spec in self.providers.items()
        }
        return self.model_copy(update={"providers": providers})


def load_catalog(path: Path) -> Catalog:
    """Read and validate a catalog TOML file."""
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    return Catalog.model_validate({"prices_read": raw.get("prices_read"), "providers": raw.get("providers", {})})


@lru_cache(maxsize=8)
def cached_catalog(path: Path) -> Catalog:
    """``load_catalog`` once per path per process."""
    return load_catalog(path)
