"""Resilience primitives for provider dispatch: circuit breakers, rate-limit buckets, retries, fallback.

Everything here is a plain library (no Kafka) driven by an injectable ``Clock``:

- ``CircuitBreaker`` / ``BreakerBoard``: per-provider circuits whose transitions are ``ProviderHealth`` events;
- ``TokenBucket`` / ``ProviderLimiter``: rpm/tpm/burst limits with bounded waits (``RateLimitSaturated``);
- ``limits``: deterministic split of a provider's limits across partitions/workers;
- ``RetryPolicy``: which errors retry, and how long to wait (backoff with full jitter, Retry-After, deadline);
- ``ResilientCaller``: fallback chains over all of the above, returning every attempt.
"""

from streams.resilience.caller import (
    Attempt,
    CallResult,
    ResilientCaller,
    ResilientEvent,
    ResilientStream,
    Route,
    StreamError,
    estimate_tokens,
)
from streams.resilience.circuit_breaker import BreakerBoard, CircuitBreaker, is_health_failure
from streams.resilience.clock import SYSTEM_CLOCK, Clock, Deadline, FakeClock, SystemClock
from streams.resilience.errors import CircuitOpen, RateLimitSaturated, RequestExceedsRateLimit
from streams.resilience.limits import LimitShare, provider_share, share_for, split
from streams.resilience.retry import RetryPolicy, call_with_retries
from streams.resilience.token_bucket import ProviderLimiter, TokenBucket

__all__ = [
    "SYSTEM_CLOCK",
    "Attempt",
    "BreakerBoard",
    "CallResult",
    "CircuitBreaker",
    "CircuitOpen",
    "Clock",
    "Deadline",
    "FakeClock",
    "LimitShare",
    "ProviderLimiter",
    "RateLimitSaturated",
    "RequestExceedsRateLimit",
    "ResilientCaller",
    "ResilientEvent",
    "ResilientStream",
    "RetryPolicy",
    "Route",
    "StreamError",
    "SystemClock",
    "TokenBucket",
    "call_with_retries",
    "estimate_tokens",
    "is_health_failure",
    "provider_share",
    "share_for",
    "split",
]
