"""The request event: what an application produces to ``<prefix>.requests``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.base import Event, utc_now

RequestKind = Literal["chat", "embedding"]
Tier = Literal["free", "basic", "pro", "enterprise"]
Role = Literal["system", "user", "assistant", "tool"]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"
"""A legal Kafka topic name: the only characters Kafka accepts, at most 249 of them."""

CREATED_AT_MAX_AHEAD = timedelta(minutes=5)
"""How far a request's ``created_at`` may lie ahead of the validating clock (producers' clock skew)."""
CREATED_AT_MAX_AGE = timedelta(days=7)
"""How far it may lie behind (a stock topic's retention: no record in flight is older)."""


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


class Request(Event):
    """An LLM request. ``request_id`` is the client's handle; answers come back under it."""

    request_id: str = Field(pattern=ID_PATTERN)
    tenant: str = Field(pattern=TENANT_PATTERN)
    tier: Tier | None = Field(
        default=None, description="A hint only: the tenant's configured tier wins when one is set."
    )
    kind: RequestKind = "chat"
    messages: list[Message] | None = None
    input: list[str] | None = Field(
        default=None,
        max_length=2048,
        description="Texts to embed (kind=embedding), at most 2048 (OpenAI's limit per request). The answer must "
        "also fit one broker record: about 8 KB per 384-dim vector, 33 KB per 1536-dim one; an answer the broker "
        "refuses is a payload_too_large error.",
    )
    model: str | None = Field(default=None, description="Preferred model, e.g. 'gpt-4o-mini'.")
    quality_floor: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stream: bool = False
    idempotency_key: str | None = Field(default=None, max_length=256)
    created_at: AwareDatetime = Field(
        default_factory=utc_now,
        description="When the request was made, with a timezone; within 5 minutes ahead and 7 days behind now.",
    )
    deadline_ms: int = Field(default=30_000, ge=1, le=3_600_000)
    reply_topic: str | None = Field(
        default=None,
        pattern=TOPIC_PATTERN,
        description="Where the answer goes: the shared responses topic or one under responses.<tenant>; it must exist.",
    )
    region: str | None = Field(default=None, max_length=64)
    cache_bypass: bool = Field(default=False, description="Never answer from the cache, nor fill it.")
    cache_nondeterministic: bool = Field(
        default=False, description="Cache this answer although sampling is not deterministic (temperature > 0)."
    )
    allow_semantic_cache: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("created_at")
    @classmethod
    def _created_at_near_now(cls, value: datetime) -> datetime:
        now = utc_now()
        if value > now + CREATED_AT_MAX_AHEAD:
            ahead = int(CREATED_AT_MAX_AHEAD.total_seconds() // 60)
            raise ValueError(f"must not be more than {ahead} minutes ahead of now ({now.isoformat()})")
        if value < now - CREATED_AT_MAX_AGE:
            raise ValueError(f"must not be more than {CREATED_AT_MAX_AGE.days} days before now ({now.isoformat()})")
        return value

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> Self:
        if self.kind == "chat" and not self.messages:
            raise ValueError("a chat request needs at least one message")
        if self.kind == "embedding" and not self.input:
            raise ValueError("an embedding request needs at least one input text")
        return self

    @property
    def deadline(self) -> datetime:
        """The absolute time after which nobody waits for this answer."""
        return self.created_at + timedelta(milliseconds=self.deadline_ms)
