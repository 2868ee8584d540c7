"""Typed error reasons carried by responses, chunks, usage events and dead letters."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ErrorReason(StrEnum):
    """Why a request did not end in an answer. Clients branch on this, never on message text."""

    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    FORBIDDEN_REPLY_TOPIC = "forbidden_reply_topic"
    RATE_LIMITED = "rate_limited"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    CONTENT_FILTERED = "content_filtered"
    AUTHENTICATION = "authentication"
    MODEL_NOT_FOUND = "model_not_found"
    """The provider does not serve the model or deployment it was asked for (HTTP 404): its configuration."""
    PROVIDER_QUOTA_EXHAUSTED = "provider_quota_exhausted"
    """The provider account's quota or billing is used up (HTTP 402, or 429 ``insufficient_quota``)."""
    MALFORMED_PROVIDER_RESPONSE = "malformed_provider_response"
    EXCEEDS_RATE_LIMIT = "exceeds_rate_limit"
    """The request needs more tokens than the rate-limit share that serves it can ever grant (not retryable)."""
    QUOTA_EXCEEDED = "quota_exceeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    NO_PROVIDER = "no_provider"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    STREAM_INTERRUPTED = "stream_interrupted"
    INTERNAL = "internal"


class ErrorInfo(BaseModel):
    """A typed error: the reason, a human message, and whether trying again can help."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: ErrorReason
    message: str = Field(max_length=2000)
    retryable: bool = False
    provider: str | None = None
    retry_after_s: float | None = Field(default=None, ge=0)
    resets_at: datetime | None = None
