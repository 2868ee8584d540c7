"""The usage event: one per attempt (and per cache hit), the source of every cost report."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Event, utc_now
from schemas.errors import ErrorReason


class UsageEvent(Event):
    """What one attempt used and cost. ``event_id`` is deterministic, so replays are idempotent."""

    event_id: str = Field(description="'<request_id>:<attempt>' or '<request_id>:cache': stable on replay.")
    request_id: str
    tenant: str
    tier: str | None = None
    kind: Literal["chat", "embedding"] = "chat"
    provider: str
    model: str
    status: Literal["ok", "error", "cached", "rejected"] = Field(
        description="'rejected': the request ended without any provider call (attempt 0, $0); it only releases "
        "the budget its admission reserved and is not stored by the analytics sink."
    )
    error_reason: ErrorReason | None = None
    attempt: int = Field(default=1, ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    saved_cost_usd: float = Field(default=0.0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    streamed: bool = False
    route_reason: str | None = None
    region: str | None = None
    worker: str | None = None
    ts: datetime = Field(default_factory=utc_now)
