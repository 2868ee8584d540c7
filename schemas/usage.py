"""The usage event: one per attempt (and per cache hit), the source of every cost report."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Event, utc_now
from schemas.errors import ErrorReason

UINT16_MAX = 2**16 - 1
UINT64_MAX = 2**64 - 1
MONEY_LIMIT = 1e9  # Decimal(18, 9): 9 digits before the point


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
    # Bounded by the usage_events column types (001_usage_events.sql), so a record the store cannot
    # hold fails validation and is dead-lettered with its reason instead of failing the insert.
    attempt: int = Field(default=1, ge=0, le=UINT16_MAX)  # UInt16
    input_tokens: int = Field(default=0, ge=0, le=UINT64_MAX)  # UInt64
    output_tokens: int = Field(default=0, ge=0, le=UINT64_MAX)  # UInt64
    cost_usd: float = Field(default=0.0, ge=0, lt=MONEY_LIMIT, allow_inf_nan=False)  # Decimal(18, 9)
    saved_cost_usd: float = Field(default=0.0, ge=0, lt=MONEY_LIMIT, allow_inf_nan=False)  # Decimal(18, 9)
    latency_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # Float64, finite for the percentiles
    streamed: bool = False
    route_reason: str | None = None
    region: str | None = None
    worker: str | None = None
    prompt: str | None = Field(
        default=None,
        description="The request's prompt (its messages, or its texts to embed), on the first attempt's event only, "
        "and only when the operator set clickhouse.store_prompts; the analytics sink stores it in the prompts "
        "table (never in usage_events).",
    )
    ts: datetime = Field(default_factory=utc_now)
