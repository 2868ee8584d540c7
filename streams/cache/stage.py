"""The cache stage: consulted by the gate before routing, and fed by the cache topic.

``admit`` gives each valid request one of three fates: answered from a stored entry (an exact or
semantic hit), parked as a waiter on an identical request already in flight, or sent on as the
leader of a new entry with a ``CacheTicket``. ``handle`` consumes the cache topic: a leader's fill
stores its answer and answers the waiters; a purge or sweep drops entries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from pydantic import TypeAdapter, ValidationError

from schemas.base import utc_now
from schemas.cache import CacheEntry, CacheFill, CachePurge, CacheTicket, Waiter
from schemas.errors import ErrorInfo, ErrorReason
from schemas.request import Request, Tier
from streams import metrics
from streams.cache.answers import answered_outbox, failed_outbox
from streams.cache.entry import is_fresh
from streams.cache.keys import cache_keys, semantic_text
from streams.cache.semantic import SemanticIndex
from streams.cache.store import CacheStore
from streams.catalog import Catalog
from streams.publisher import Outbox, Publisher, publish_all
from streams.settings import CacheSettings
from streams.topics import Topics

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], Awaitable[np.ndarray]]
CacheRecord = CacheFill | CachePurge
_RECORD: TypeAdapter[CacheRecord] = TypeAdapter(CacheRecord)


@dataclass(frozen=True, slots=True)
class Admission:
    """The cache's verdict on a request: answered already, or to be routed (leading ``ticket``, if any)."""

    answered: bool
    ticket: CacheTicket | None = None


ROUTE = Admission(answered=False)


class CacheStage:
    """Idempotency, coalescing, the exact cache and the semantic cache, over one ``CacheStore``."""

    def __init__(
        self,
        *,
        store: CacheStore,
        catalog: Catalog,
        topics: Topics,
        publisher: Publisher,
        settings: CacheSettings,
        index: SemanticIndex,
        embed: Embed | None,
        worker_id: str,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._topics = topics
        self._pub = publisher
        self._settings = settings
        self._index = index
        self._embed = embed
        self._worker = worker_id

    @property
    def index(self) -> SemanticIndex:
        return self._index

    # -- the gate's side -----------------------------------------------------------------------
    async def admit(self, request: Request, *, tier: Tier, reply_topic: str, partition: int) -> Admission:
        """Answer ``request`` from the cache, park it on an identical call in flight, or let it lead."""
        scope = self._catalog.cache_scope_of(request.tenant)
        keys = cache_keys(request, scope=scope, tier=tier)
        if keys is None:
            return ROUTE
        ttl = (
            self._settings.idempotency_window_s if keys.idempotent else self._catalog.cache_ttl_of(request.tenant, tier)
        )
        if ttl <= 0:
            return ROUTE
        waiter = Waiter(
            request_id=request.request_id,
            tenant=request.tenant,
            tier=tier,
            reply_topic=reply_topic,
            stream=request.stream,
            kind=request.kind,
            region=request.region,
            created_at=request.created_at,
        )
        now = utc_now()
        # a leader's claim lapses after its deadline (never later than now + deadline_ms, whatever the
        # producer's clock says) plus the grace: then an identical request takes over the lead
        latest = now + timedelta(milliseconds=request.deadline_ms)
        lead_until = min(max(request.deadline, now), latest) + timedelta(seconds=self._settings.pending_grace_s)
        key = keys.key
        vector: list[float] | None = None
        semantic = False
        if keys.semantic_ns is not None and self._embed is not None:
            current = await self._store.get(key)
            if current is None or not is_fresh(current, now):
                vector, similar = await self._semantic_lookup(scope, keys.semantic_ns, request)
                metrics.record_cache_lookup("semantic", similar is not None)
                if similar is not None:  # a paraphrase is answered or in flight: take its answer, or wait for it
                    key, semantic = similar.key, True
        claim = await self._store.claim(
            key, scope=scope, partition=partition, waiter=waiter, now=now, lead_until=lead_until
        )
        if claim.outcome == "hit":
            metrics.record_cache_lookup("exact", True)
            reason = "semantic cache hit" if semantic else "idempotent replay" if keys.idempotent else "cache hit"
            await self._answer(waiter, claim.entry, reason=reason)
            return Admission(answered=True)
        if claim.outcome == "join":
            metrics.record_cache_lookup("coalesced", True)
            return Admission(answered=True)  # answered when the leader's fill arrives
        metrics.record_cache_lookup("exact", False)
        semantic_ns = keys.semantic_ns if vector is not None else None
        if semantic_ns is not None and vector is not None:
            self._index.add(semantic_ns, key, vector)  # paraphrases arriving while this call is out wait for it
        ticket = CacheTicket(
            key=key, scope=scope, partition=partition, ttl_s=ttl, semantic_ns=semantic_ns, vector=vector
        )
        return Admission(answered=False, ticket=ticket)

    async def abandon(self, ticket: CacheTicket, leader: str, error: ErrorInfo) -> None:
        """A leader that failed before it was routed (quota, budget, no provider): release its waiters."""
        await self._apply_fill(CacheFill(ticket=ticket, leader=leader, error=error))

    async def _semantic_lookup(
        self, scope: str, namespace: str, request: Request
    ) -> tuple[list[float] | None, CacheEntry | None]:
        assert self._embed is not None
        try:
            vector = (await self._embed([semantic_text(request)]))[0]
        except Exception:  # the semantic cache is an optimisation: never fail a request for it
            log.warning("semantic cache: embedding failed; looking up exact keys only", exc_info=True)
            return None, None
        if not self._index.loaded(scope):
            for stored in await self._store.done_entries(scope):
                if stored.semantic_ns and stored.vector:
                    self._index.add(stored.semantic_ns, stored.key, stored.vector)
            self._index.mark_loaded(scope)
        match = self._index.search(namespace, vector)
        if match is None:
            return vector.tolist(), None
        found = await self._store.get(match.key)
        if found is None or not is_fresh(found, utc_now()):
            self._index.remove(namespace, match.key)
            return vector.tolist(), None
        return vector.tolist(), found

    async def _answer(self, waiter: Waiter, entry: CacheEntry, *, reason: str) -> None:
        assert entry.answer is not None
        chunks, rest = answered_outbox(self._topics, waiter, entry.answer, reason=reason, worker=self._worker)
        if chunks:
            await publish_all(self._pub, chunks)
        metrics.add_cost_saved(waiter.tenant, entry.answer.cost_usd)
        await publish_all(self._pub, rest)

    # -- the cache topic's side ----------------------------------------------------------------
    async def handle(self, raw: bytes | None, *, partition: int) -> None:
        """One record of the cache topic. An unreadable one is logged and skipped (it is internal)."""
        try:
            record = _RECORD.validate_json(raw or b"")
        except (ValidationError, ValueError):
            log.error("cache topic: skipping a record that is neither a fill nor a purge")
            return
        if isinstance(record, CacheFill):
            await self._apply_fill(record)
        else:
            await self._purge(record, partition)

    async def _apply_fill(self, fill: CacheFill) -> None:
        change = await self._store.fill(fill, utc_now())
        stored = change.store
        if stored is not None and stored.semantic_ns and stored.vector:
            self._index.add(stored.semantic_ns, stored.key, stored.vector)
        if not change.waiters:
            return
        if stored is not None and stored.answer is not None:
            reason = f"coalesced with {fill.leader}"
            chunks: Outbox = []
            rest: Outbox = []
            for waiter in change.waiters:
                c, r = answered_outbox(self._topics, waiter, stored.answer, reason=reason, worker=self._worker)
                chunks += c
                rest += r
                metrics.add_cost_saved(waiter.tenant, stored.answer.cost_usd)
            if chunks:
                await publish_all(self._pub, chunks)
            await publish_all(self._pub, rest)
            return
        error = fill.error or ErrorInfo(reason=ErrorReason.INTERNAL, message="the leading request failed")
        out: Outbox = []
        for waiter in change.waiters:
            out += failed_outbox(self._topics, waiter, error)
        await publish_all(self._pub, out)

    async def _purge(self, purge: CachePurge, partition: int) -> None:
        removed = await self._store.purge(
            scope=purge.scope, partition=partition, expired_only=purge.expired_only, now=utc_now()
        )
        lost = ErrorInfo(
            reason=ErrorReason.DEADLINE_EXCEEDED,
            message="the identical request this one waited on was not answered in time",
            retryable=True,
        )
        out: Outbox = []
        for entry in removed:
            if entry.semantic_ns:
                self._index.remove(entry.semantic_ns, entry.key)
            for waiter in entry.waiters:
                out += failed_outbox(self._topics, waiter, lost)
        if out:
            await publish_all(self._pub, out)
        if removed and not purge.expired_only:
            log.warning("cache purge %s: removed %d entries of scope %s", purge.purge_id, len(removed), purge.scope)
