"""The cache's internal events and the entry it stores.

A request that misses the cache leads: the gate writes a *pending* entry under the request's cache
key and routes the request with a ``CacheTicket``. Requests with the same key that arrive while it
is pending wait on the entry instead of calling a provider. When the leader's answer is on the
broker, dispatch (or infer) sends a ``CacheFill`` to the cache topic, on the partition that owns the
entry; the cache agent stores the answer and answers every waiter under its own request id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.base import Event, utc_now
from schemas.errors import ErrorInfo
from schemas.response import TokenUsage


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CacheTicket(_Frozen):
    """What the gate attaches to a leading request so its answer can fill the cache."""

    key: str = Field(description="The entry's key (already scoped to a tenant or shared scope).")
    scope: str = Field(description="Tenant name, or 'shared:<name>' for a configured shared scope.")
    partition: int = Field(ge=0, description="Partition of the cache topic that owns the entry.")
    ttl_s: float = Field(gt=0, description="How long the answer stays valid once stored.")
    semantic_ns: str | None = Field(default=None, description="Semantic index namespace, when it may be used.")
    vector: list[float] | None = Field(default=None, description="The prompt's embedding (semantic cache).")


class CachedAnswer(_Frozen):
    """The part of a provider's answer that a later identical request can be given."""

    provider: str
    model: str
    output: str | None = None
    embeddings: list[list[float]] | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float = Field(default=0.0, ge=0, description="What the answer cost when it was bought.")


class Waiter(_Frozen):
    """A request waiting on another request's provider call."""

    request_id: str
    tenant: str
    tier: str | None = None
    reply_topic: str
    stream: bool = False
    kind: Literal["chat", "embedding"] = "chat"
    region: str | None = None
    created_at: datetime = Field(default_factory=utc_now)


class CacheEntry(_Frozen):
    """One key's state: a call in flight (pending) or a stored answer (done)."""

    key: str
    scope: str
    partition: int = Field(ge=0, description="Partition whose changelog holds the entry (purges go by it).")
    state: Literal["pending", "done"]
    leader: str = Field(description="Request id whose provider call fills (or filled) the entry.")
    stale_at: datetime = Field(description="Pending: after this the leader is presumed lost. Done: expiry.")
    waiters: list[Waiter] = Field(default_factory=list)
    answer: CachedAnswer | None = None
    semantic_ns: str | None = None
    vector: list[float] | None = None


class CacheFill(Event):
    """Dispatch to the cache owner: the leader's answer (ok) or its failure (the waiters get the error)."""

    type: Literal["fill"] = "fill"
    ticket: CacheTicket
    leader: str
    answer: CachedAnswer | None = None
    error: ErrorInfo | None = None
    ts: datetime = Field(default_factory=utc_now)


class CachePurge(Event):
    """An operator's purge of one scope's entries (sent to every partition of the cache topic)."""

    type: Literal["purge"] = "purge"
    scope: str = Field(description="The scope to purge, or '*' for every scope.")
    expired_only: bool = Field(default=False, description="Drop only expired entries (the periodic sweep).")
    purge_id: str
    ts: datetime = Field(default_factory=utc_now)
