"""Dead letters: records no stage could accept, kept with a typed reason so nothing is lost."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.base import Event, utc_now


class DeadLetterReason(StrEnum):
    """Why a record was set aside."""

    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    FORBIDDEN_REPLY_TOPIC = "forbidden_reply_topic"
    PROCESSING_FAILED = "processing_failed"


class DeadLetter(Event):
    """The original record (base64, so any bytes survive), where it came from, and why it failed."""

    reason: DeadLetterReason
    detail: str = Field(max_length=4000)
    source_topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    request_id: str | None = None
    tenant: str | None = None
    payload_b64: str
    payload_size: int = Field(ge=0)
    payload_sha256: str
    payload_truncated: bool = False
    ts: datetime = Field(default_factory=utc_now)
