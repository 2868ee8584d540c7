"""The cache entry's state machine, free of any store: claim a key, fill it, purge it.

Every store applies these transitions atomically (a Faust table by running them without an await
in between, Redis inside a WATCH/MULTI transaction), so the rules live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from schemas.cache import CacheEntry, CacheFill, Waiter

ClaimOutcome = Literal["lead", "join", "hit"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a request that looked up a key must do: call a provider, wait, or take the stored answer."""

    outcome: ClaimOutcome
    entry: CacheEntry


@dataclass(frozen=True, slots=True)
class Change:
    """A transition's result: what to write (``store``), whether to delete, and whom to answer."""

    store: CacheEntry | None = None
    delete: bool = False
    waiters: list[Waiter] = field(default_factory=list)


def is_fresh(entry: CacheEntry, now: datetime) -> bool:
    """A done entry before its expiry, or a pending one whose leader is still presumed alive."""
    return entry.stale_at > now


def claim(
    entry: CacheEntry | None,
    *,
    key: str,
    scope: str,
    partition: int,
    waiter: Waiter,
    now: datetime,
    lead_until: datetime,
) -> tuple[Change, Claim]:
    """Look up ``key`` for ``waiter``'s request and take the role it gets."""
    if entry is not None and entry.state == "done" and is_fresh(entry, now):
        return Change(), Claim("hit", entry)
    if entry is not None and entry.state == "pending":
        if entry.leader == waiter.request_id:  # the leader's record, redelivered after a crash
            return Change(), Claim("lead", entry)
        if is_fresh(entry, now):
            if any(w.request_id == waiter.request_id for w in entry.waiters):  # a redelivered waiter
                return Change(), Claim("join", entry)
            joined = entry.model_copy(update={"waiters": [*entry.waiters, waiter]})
            return Change(store=joined), Claim("join", joined)
        # the leader is presumed lost: this request leads now, and the waiters stay
        taken = entry.model_copy(update={"leader": waiter.request_id, "stale_at": lead_until})
        return Change(store=taken), Claim("lead", taken)
    fresh = CacheEntry(
        key=key, scope=scope, partition=partition, state="pending", leader=waiter.request_id, stale_at=lead_until
    )
    return Change(store=fresh), Claim("lead", fresh)


def fill(entry: CacheEntry | None, event: CacheFill, now: datetime) -> Change:
    """Store a leader's answer and release the waiters (or, on failure, release them with no answer)."""
    pending = entry is not None and entry.state == "pending"
    waiters = list(entry.waiters) if entry is not None and pending else []
    if event.answer is None:
        if entry is None or not pending or entry.leader != event.leader:
            return Change()  # a stale failure: another leader took over, or an answer is stored already
        return Change(delete=True, waiters=waiters)
    ticket = event.ticket
    done = CacheEntry(
        key=ticket.key,
        scope=ticket.scope,
        partition=ticket.partition,
        state="done",
        leader=event.leader,
        stale_at=now + timedelta(seconds=ticket.ttl_s),
        answer=event.answer,
        semantic_ns=ticket.semantic_ns,
        vector=ticket.vector,
    )
    return Change(store=done, waiters=waiters)


def purgeable(entry: CacheEntry, *, scope: str, partition: int, expired_only: bool, now: datetime) -> bool:
    """Whether a purge (or sweep) on ``partition`` removes ``entry``.

    Only the partition that holds an entry deletes it, so the tombstone lands in the right changelog.
    A pending entry is only swept once its leader is presumed lost (its waiters then get an error).
    """
    if entry.partition != partition:
        return False
    if entry.state == "pending":
        return expired_only and not is_fresh(entry, now)
    if scope not in ("*", entry.scope):
        return False
    return not expired_only or not is_fresh(entry, now)
