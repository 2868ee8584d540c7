"""Cache entries in Redis: one JSON value per key, transitions inside WATCH/MULTI transactions.

Redis is the backend for deployments that share cached answers between tenants (shared scopes):
it is one store for every partition, where the Faust table is partitioned like the requests.
Expiry is Redis's own (PEXPIREAT at the entry's ``stale_at``, plus a grace for pending entries).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from schemas.cache import CacheEntry, CacheFill, Waiter
from streams.cache import entry as transitions
from streams.cache.entry import Change, Claim
from streams.cache.store import parse_entry

_PENDING_KEEP = timedelta(minutes=10)
"""A pending entry outlives its stale time this long, so a late fill still finds its waiters."""


class RedisCacheStore:
    """Entries under ``<prefix>:<key>`` in one Redis database."""

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> RedisCacheStore:
        return cls(aioredis.Redis.from_url(url), prefix=prefix)

    def _name(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def get(self, key: str) -> CacheEntry | None:
        return parse_entry(await self._redis.get(self._name(key)))

    async def _transact(self, key: str, step: Any) -> Any:
        """Run ``step(current_entry) -> (Change, result)`` atomically for one key (retried on conflict)."""
        name = self._name(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    change, result = step(parse_entry(await pipe.get(name)))
                    pipe.multi()
                    if change.delete:
                        pipe.delete(name)
                    elif change.store is not None:
                        keep_until = change.store.stale_at
                        if change.store.state == "pending":
                            keep_until += _PENDING_KEEP
                        pipe.set(name, change.store.model_dump_json(exclude_none=True))
                        pipe.pexpireat(name, keep_until)
                    await pipe.execute()
                    return result
                except WatchError:
                    continue

    async def claim(
        self, key: str, *, scope: str, partition: int, waiter: Waiter, now: datetime, lead_until: datetime
    ) -> Claim:
        def step(current: CacheEntry | None) -> tuple[Change, Claim]:
            return transitions.claim(
                current, key=key, scope=scope, partition=partition, waiter=waiter, now=now, lead_until=lead_until
            )

        result: Claim = await self._transact(key, step)
        return result

    async def fill(self, event: CacheFill, now: datetime) -> Change:
        def step(current: CacheEntry | None) -> tuple[Change, Change]:
            change = transitions.fill(current, event, now)
            return change, change

        result: Change = await self._transact(event.ticket.key, step)
        return result

    async def _scan(self, scope: str) -> list[str]:
        pattern = f"{self._prefix}:*" if scope == "*" else f"{self._prefix}:{scope}|*"
        return [k.decode() if isinstance(k, bytes) else k async for k in self._redis.scan_iter(match=pattern)]

    async def purge(self, *, scope: str, partition: int, expired_only: bool, now: datetime) -> list[CacheEntry]:
        # Redis is one store for all partitions: a purge removes the scope's entries wherever they were written.
        removed = []
        for name in await self._scan(scope):
            found = parse_entry(await self._redis.get(name))
            if found is None:
                continue
            if transitions.purgeable(
                found, scope=scope, partition=found.partition, expired_only=expired_only, now=now
            ) and await self._redis.delete(name):
                removed.append(found)
        return removed

    async def done_entries(self, scope: str) -> list[CacheEntry]:
        out = []
        for name in await self._scan(scope):
            found = parse_entry(await self._redis.get(name))
            if found is not None and found.state == "done":
                out.append(found)
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()
