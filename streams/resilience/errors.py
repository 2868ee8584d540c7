"""Errors the resilience layer raises itself (the provider errors live in ``streams.errors``)."""

from __future__ import annotations

from schemas.errors import ErrorReason
from streams.errors import AifleetError


class RateLimitSaturated(AifleetError):
    """Our own share of a provider's rate limit is used up for longer than the caller may wait.

    Raised before any call is made; ``retry_after_s`` says when capacity frees up. A request larger than
    the whole bucket raises the subclass ``RequestExceedsRateLimit`` (not retryable) instead.
    """

    reason = ErrorReason.RATE_LIMITED
    retryable = True


class RequestExceedsRateLimit(RateLimitSaturated):
    """The request's token estimate is larger than the whole of this worker's share of a provider's tpm
    limit: no wait will ever let it through, so retrying it as it is cannot help (ask for fewer tokens)."""

    reason = ErrorReason.EXCEEDS_RATE_LIMIT
    retryable = False


class CircuitOpen(AifleetError):
    """The provider's circuit is open (or its one half-open probe is in flight); no call was made."""

    reason = ErrorReason.PROVIDER_UNAVAILABLE
    retryable = True
