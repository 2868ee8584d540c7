"""The Redis cache store against a real redis-server: atomic claims under concurrency, fill, purge, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.base import utc_now
from schemas.cache import CachedAnswer, CacheFill, CacheTicket, Waiter
from streams.cache.redis_store import RedisCacheStore
from tests.fixtures.redis_server import redis_server

pytestmark = [pytest.mark.slow]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RedisCacheStore]:
    with redis_server(tmp_path / "redis") as url:
        s = RedisCacheStore.from_url(url, prefix="t")
        try:
            yield s
        finally:
            await s.aclose()


def waiter(rid: str) -> Waiter:
    return Waiter(request_id=rid, tenant="acme", reply_topic="p.responses")


async def test_many_concurrent_claims_make_one_leader_and_every_other_a_waiter(store: RedisCacheStore) -> None:
    now = utc_now()
    claims = await asyncio.gather(
        *(
            store.claim(
                "acme|k",
                scope="acme",
                partition=0,
                waiter=waiter(f"r{i}"),
                now=now,
                lead_until=now + timedelta(seconds=30),
            )
            for i in range(40)
        )
    )
    leaders = [c for c in claims if c.outcome == "lead"]
    assert len(leaders) == 1
    assert sum(1 for c in claims if c.outcome == "join") == 39
    ticket = CacheTicket(key="acme|k", scope="acme", partition=0, ttl_s=1.0)
    answer = CachedAnswer(provider="openai", model="m", output="x", cost_usd=0.01)
    change = await store.fill(CacheFill(ticket=ticket, leader=leaders[0].entry.leader, answer=answer), utc_now())
    assert len(change.waiters) == 39
    hit = await store.claim(
        "acme|k",
        scope="acme",
        partition=0,
        waiter=waiter("late"),
        now=utc_now(),
        lead_until=utc_now() + timedelta(seconds=30),
    )
    assert hit.outcome == "hit" and hit.entry.answer == answer
    await asyncio.sleep(1.3)  # Redis expires the entry at its stale_at
    assert await store.get("acme|k") is None


async def test_purge_removes_only_the_scope(store: RedisCacheStore) -> None:
    answer = CachedAnswer(provider="openai", model="m", output="x")
    for scope in ("acme", "globex", "shared:team"):
        ticket = CacheTicket(key=f"{scope}|k", scope=scope, partition=1, ttl_s=60)
        await store.fill(CacheFill(ticket=ticket, leader="l", answer=answer), utc_now())
    removed = await store.purge(scope="acme", partition=0, expired_only=False, now=utc_now())
    assert [e.key for e in removed] == ["acme|k"]
    assert await store.get("acme|k") is None
    assert await store.get("globex|k") is not None
    assert {e.key for e in await store.done_entries("shared:team")} == {"shared:team|k"}
