"""Where cache entries live: a changelog-backed Faust table (default) or Redis.

Both apply the transitions of ``streams.cache.entry`` atomically. The table is partitioned like the
requests topic (entries are written while handling a record of the owning partition), so an entry
survives a worker crash through its changelog and moves with its partition on a rebalance.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.cache import CacheEntry, CacheFill, Waiter
from streams.cache import entry as transitions
from streams.cache.entry import Change, Claim


class CacheStore(Protocol):
    """An entry store with atomic claim and fill."""

    async def get(self, key: str) -> CacheEntry | None: ...

    async def claim(
        self, key: str, *, scope: str, partition: int, waiter: Waiter, now: datetime, lead_until: datetime
    ) -> Claim: ...

    async def fill(self, event: CacheFill, now: datetime) -> Change: ...

    async def purge(self, *, scope: str, partition: int, expired_only: bool, now: datetime) -> list[CacheEntry]: ...

    async def done_entries(self, scope: str) -> list[CacheEntry]: ...

    async def aclose(self) -> None: ...


def parse_entry(raw: Any) -> CacheEntry | None:
    """An entry from its stored form (a dict in the table, JSON bytes in Redis); None if unreadable."""
    if raw is None:
        return None
    try:
        if isinstance(raw, bytes | str):
            return CacheEntry.model_validate_json(raw)
        return CacheEntry.model_validate(raw)
    except ValidationError:
        return None  # an entry from an incompatible version: treated as a miss and overwritten


class TableCacheStore:
    """Entries in a Faust table (``MutableMapping`` view). Calls must run inside the owning record's handler."""

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self._table = table

    def _apply(self, key: str, change: Change) -> None:
        if change.delete:
            self._table.pop(key, None)
        elif change.store is not None:
            self._table[key] = change.store.model_dump(mode="json", exclude_none=True)

    async def get(self, key: str) -> CacheEntry | None:
        return parse_entry(self._table.get(key))

    async def claim(
        self, key: str, *, scope: str, partition: int, waiter: Waiter, now: datetime, lead_until: datetime
    ) -> Claim:
        change, result = transitions.claim(
            parse_entry(self._table.get(key)),
            key=key,
            scope=scope,
            partition=partition,
            waiter=waiter,
            now=now,
            lead_until=lead_until,
        )
        self._apply(key, change)
        return result

    async def fill(self, event: CacheFill, now: datetime) -> Change:
        key = event.ticket.key
        change = transitions.fill(parse_entry(self._table.get(key)), event, now)
        self._apply(key, change)
        return change

    async def purge(self, *, scope: str, partition: int, expired_only: bool, now: datetime) -> list[CacheEntry]:
        removed = []
        for key in list(self._table.keys()):
            found = parse_entry(self._table.get(key))
            if found is None:
                continue
            if transitions.purgeable(found, scope=scope, partition=partition, expired_only=expired_only, now=now):
                self._table.pop(key, None)
                removed.append(found)
        return removed

    async def done_entries(self, scope: str) -> list[CacheEntry]:
        prefix = f"{scope}|"
        out = []
        for key in list(self._table.keys()):
            if isinstance(key, str) and key.startswith(prefix):
                found = parse_entry(self._table.get(key))
                if found is not None and found.state == "done":
                    out.append(found)
        return out

    async def aclose(self) -> None:
        return None
