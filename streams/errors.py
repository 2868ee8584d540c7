"""The one error tree of aifleet. Every error knows its typed reason and whether a retry can help.

AifleetError
├── InvalidRecord                 bad input: goes to the DLQ, never kills a worker
│   ├── InvalidJson
│   ├── SchemaViolation
│   ├── PayloadTooLarge
│   ├── ForbiddenReplyTopic
│   │   └── MissingReplyTopic     a reply topic the broker does not have
│   └── ProcessingFailed          a handler bug: the record is kept in the DLQ
├── ProviderError                 raised by adapters only; nothing provider-specific leaks past dispatch
│   ├── RateLimited               retryable, honours retry_after_s
│   ├── ProviderUnavailable       retryable (5xx, connection refused)
│   ├── ProviderTimeout           retryable
│   ├── MalformedProviderResponse retryable (a body that is not the wire format)
│   ├── BadRequest
│   ├── ContextLengthExceeded
│   ├── ContentFiltered
│   ├── AuthenticationFailed
│   ├── ModelNotFound             the provider lacks the model/deployment (404): fall back, breaker counts
│   └── ProviderQuotaExhausted    the provider account's quota/billing is spent: fall back, breaker counts
├── LocalCallError                a provider call could not be built or sent here: never blamed on the provider
├── StreamInterrupted             a stream broke after chunks went out
├── NoProviderAvailable           routing found nothing that can serve the request
├── DeadlineExceeded
└── QuotaError
    ├── QuotaExceeded
    └── BudgetExceeded
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from schemas.dead_letter import DeadLetterReason
from schemas.errors import ErrorInfo, ErrorReason


class AifleetError(Exception):
    """Root of every error aifleet raises on purpose."""

    reason: ClassVar[ErrorReason] = ErrorReason.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retry_after_s: float | None = None,
        resets_at: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.retry_after_s = retry_after_s
        self.resets_at = resets_at

    def to_info(self) -> ErrorInfo:
        """The wire form of this error, for responses, chunks and usage events."""
        return ErrorInfo(
            reason=self.reason,
            message=self.message[:2000],
            retryable=self.retryable,
            provider=self.provider,
            retry_after_s=self.retry_after_s,
            resets_at=self.resets_at,
        )


class InvalidRecord(AifleetError):
    """A record no stage can accept; it is answered (when its id is readable) and dead-lettered."""

    dlq_reason: ClassVar[DeadLetterReason] = DeadLetterReason.SCHEMA_VIOLATION

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        tenant: str | None = None,
        reply_topic: str | None = None,
    ) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.tenant = tenant
        self.reply_topic = reply_topic


class InvalidJson(InvalidRecord):
    reason = ErrorReason.INVALID_JSON
    dlq_reason = DeadLetterReason.INVALID_JSON


class SchemaViolation(InvalidRecord):
    reason = ErrorReason.SCHEMA_VIOLATION
    dlq_reason = DeadLetterReason.SCHEMA_VIOLATION


class UnsupportedSchemaVersion(InvalidRecord):
    reason = ErrorReason.UNSUPPORTED_SCHEMA_VERSION
    dlq_reason = DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION


class PayloadTooLarge(InvalidRecord):
    reason = ErrorReason.PAYLOAD_TOO_LARGE
    dlq_reason = DeadLetterReason.PAYLOAD_TOO_LARGE


class ForbiddenReplyTopic(InvalidRecord):
    reason = ErrorReason.FORBIDDEN_REPLY_TOPIC
    dlq_reason = DeadLetterReason.FORBIDDEN_REPLY_TOPIC


class MissingReplyTopic(ForbiddenReplyTopic):
    """A reply topic in the tenant's namespace that does not exist (topics are never auto-created)."""


class ProcessingFailed(InvalidRecord):
    """A handler failed on the record (a bug, or a broker error it could not get past)."""

    dlq_reason = DeadLetterReason.PROCESSING_FAILED

    def __init__(
        self,
        message: str,
        *,
        public_message: str,
        request_id: str | None = None,
        tenant: str | None = None,
        reply_topic: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, tenant=tenant, reply_topic=reply_topic)
        self.public_message = public_message

    def to_info(self) -> ErrorInfo:
        """The reply names the failure's type only; the dead letter keeps the whole message."""
        return ErrorInfo(reason=self.reason, message=self.public_message[:2000], retryable=self.retryable)


class ProviderError(AifleetError):
    """Something a provider did; adapters translate their transport and status errors into these."""


class RateLimited(ProviderError):
    reason = ErrorReason.RATE_LIMITED
    retryable = True


class ProviderUnavailable(ProviderError):
    reason = ErrorReason.PROVIDER_UNAVAILABLE
    retryable = True


class ProviderTimeout(ProviderError):
    reason = ErrorReason.TIMEOUT
    retryable = True


class MalformedProviderResponse(ProviderError):
    reason = ErrorReason.MALFORMED_PROVIDER_RESPONSE
    retryable = True


class BadRequest(ProviderError):
    reason = ErrorReason.BAD_REQUEST


class ContextLengthExceeded(ProviderError):
    reason = ErrorReason.CONTEXT_LENGTH_EXCEEDED


class ContentFiltered(ProviderError):
    reason = ErrorReason.CONTENT_FILTERED


class AuthenticationFailed(ProviderError):
    reason = ErrorReason.AUTHENTICATION


class ModelNotFound(ProviderError):
    """The provider does not serve the model or deployment it was asked for (Azure DeploymentNotFound,
    Ollama "model not found"): a configuration problem at that provider, so another provider may answer.
    Not retried there; counted by its breaker; the fallback chain continues."""

    reason = ErrorReason.MODEL_NOT_FOUND


class ProviderQuotaExhausted(ProviderError):
    """The provider account's quota or billing is used up (HTTP 402, OpenAI 429 ``insufficient_quota``).
    Unlike a rate limit, waiting does not help: not retried there; counted by its breaker; the chain
    falls back."""

    reason = ErrorReason.PROVIDER_QUOTA_EXHAUSTED


class LocalCallError(AifleetError):
    """A provider call could not be built or sent by this process (a header aiohttp refuses, a bad URL
    or body): aifleet's configuration or a bug, not the provider's health. No breaker counts it; not
    retried there; the fallback chain moves on (another provider's call is built differently)."""

    reason = ErrorReason.INTERNAL


class StreamInterrupted(AifleetError):
    reason = ErrorReason.STREAM_INTERRUPTED


class NoProviderAvailable(AifleetError):
    reason = ErrorReason.NO_PROVIDER
    retryable = True


class DeadlineExceeded(AifleetError):
    reason = ErrorReason.DEADLINE_EXCEEDED


class QuotaError(AifleetError):
    """A tenant is over one of its limits."""


class QuotaExceeded(QuotaError):
    reason = ErrorReason.QUOTA_EXCEEDED


class BudgetExceeded(QuotaError):
    reason = ErrorReason.BUDGET_EXCEEDED


class BrokerError(AifleetError):
    """The embedded broker could not be fetched, formatted or started."""


class ConfigError(AifleetError):
    """The deployment's settings or catalog contradict each other; raised at start-up, never per request."""
