"""The response event: exactly one terminal answer per request, on the reply topic."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Event, utc_now
from schemas.errors import ErrorInfo

ResponseStatus = Literal["ok", "error", "cached"]


class TokenUsage(BaseModel):
    """Token counts as the provider reported them (never an estimate once a call returned)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class Latency(BaseModel):
    """Where the time went, in milliseconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    total_ms: float = Field(ge=0, description="From the request's created_at to the response.")
    provider_ms: float = Field(default=0.0, ge=0, description="Time spent inside provider calls.")


class RouteInfo(BaseModel):
    """The routing decision behind an answer, and why it was taken."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str
    reason: str
    fallback: list[str] = Field(default_factory=list)


class Response(Event):
    """The terminal answer to one request: ok, cached, or an error with a typed reason."""

    request_id: str
    tenant: str | None = None
    status: ResponseStatus
    error: ErrorInfo | None = None
    provider: str | None = None
    model: str | None = None
    output: str | None = None
    embeddings: list[list[float]] | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float = Field(default=0.0, ge=0)
    latency: Latency | None = None
    attempts: int = Field(default=0, ge=0)
    route: RouteInfo | None = None
    created_at: datetime = Field(default_factory=utc_now)
