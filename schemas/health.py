"""Provider health events: circuit-breaker transitions and probe results, on ``<prefix>.health``."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Event, utc_now

CircuitState = Literal["closed", "open", "half_open"]


class ProviderHealth(Event):
    """A provider's circuit changed state (or a probe reported). Every worker applies it."""

    provider: str
    state: CircuitState
    previous_state: CircuitState | None = None
    consecutive_failures: int = Field(default=0, ge=0)
    reason: str | None = None
    worker: str | None = None
    ts: datetime = Field(default_factory=utc_now)
