"""The cache stage over a dict-backed table store: hits, waiters, streams and failures as published."""

from __future__ import annotations

import numpy as np

from schemas.cache import CacheFill, CachePurge
from schemas.chunk import StreamChunk
from schemas.errors import ErrorInfo, ErrorReason
from schemas.request import Message, Request
from schemas.response import Response
from schemas.usage import UsageEvent
from streams.cache.answers import fill_for
from streams.cache.semantic import SemanticIndex
from streams.cache.stage import CacheStage
from streams.cache.store import TableCacheStore
from streams.catalog import load_catalog
from streams.settings import BENCH_CONFIG_FILE, CacheSettings
from streams.topics import Topics
from tests.fixtures.recording import RecordingPublisher

TOPICS = Topics("p")


def stage(embed=None) -> tuple[CacheStage, RecordingPublisher, dict]:  # type: ignore[no-untyped-def]
    pub = RecordingPublisher()
    table: dict = {}
    s = CacheStage(
        store=TableCacheStore(table),
        catalog=load_catalog(BENCH_CONFIG_FILE),
        topics=TOPICS,
        publisher=pub,
        settings=CacheSettings(semantic_threshold=0.9),
        index=SemanticIndex(threshold=0.9, max_per_namespace=100),
        embed=embed,
        worker_id="w",
    )
    return s, pub, table


def req(rid: str, content: str = "what is kafka?", **fields: object) -> Request:
    return Request(
        request_id=rid, tenant="bench", temperature=0, messages=[Message(role="user", content=content)], **fields
    )  # type: ignore[arg-type]


def ok_response(r: Request) -> Response:
    return Response(
        request_id=r.request_id,
        tenant=r.tenant,
        status="ok",
        provider="openai",
        model="gpt-4o-mini",
        output="Echo: what is kafka?",
        cost_usd=0.002,
    )


async def fill_leader(s: CacheStage, r: Request, ticket) -> None:  # type: ignore[no-untyped-def]
    from schemas.response import RouteInfo
    from schemas.routed import RoutedRequest

    routed = RoutedRequest(
        request=r,
        route=RouteInfo(provider="openai", model="gpt-4o-mini", reason="x"),
        tier="enterprise",
        reply_topic=TOPICS.responses,
        cache=ticket,
    )
    fill = fill_for(routed, ok_response(r))
    assert fill is not None
    await s.handle(fill.to_json(), partition=ticket.partition)


async def test_miss_leads_twin_waits_fill_answers_twin_then_repeat_hits() -> None:
    s, pub, _ = stage()
    lead = await s.admit(req("a"), tier="enterprise", reply_topic=TOPICS.responses, partition=3)
    assert not lead.answered and lead.ticket is not None and lead.ticket.partition == 3
    twin = await s.admit(req("b", stream=True), tier="enterprise", reply_topic=TOPICS.responses, partition=3)
    assert twin.answered and pub.sent == []  # nothing yet: b waits on a's call
    await fill_leader(s, req("a"), lead.ticket)
    chunks = [e for e in pub.on(TOPICS.chunks) if isinstance(e, StreamChunk)]
    assert [(c.request_id, c.seq, c.final) for c in chunks] == [("b", 0, False), ("b", 1, True)]
    assert chunks[0].delta == "Echo: what is kafka?"
    (resp,) = [e for e in pub.on(TOPICS.responses) if isinstance(e, Response)]
    assert resp.request_id == "b" and resp.status == "cached" and resp.cost_usd == 0
    assert resp.route is not None and resp.route.reason == "coalesced with a"
    (usage,) = [e for e in pub.on(TOPICS.usage) if isinstance(e, UsageEvent)]
    assert usage.status == "cached" and usage.saved_cost_usd == 0.002 and usage.event_id == "b:cache"
    pub.sent.clear()
    hit = await s.admit(req("c"), tier="enterprise", reply_topic=TOPICS.responses, partition=3)
    assert hit.answered
    (resp,) = [e for e in pub.on(TOPICS.responses) if isinstance(e, Response)]
    assert resp.request_id == "c" and resp.status == "cached" and resp.output == "Echo: what is kafka?"


async def test_failed_leader_gives_its_waiters_the_error_and_caches_nothing() -> None:
    s, pub, table = stage()
    lead = await s.admit(req("a"), tier="enterprise", reply_topic=TOPICS.responses, partition=0)
    assert lead.ticket is not None
    await s.admit(req("b"), tier="enterprise", reply_topic=TOPICS.responses, partition=0)
    err = ErrorInfo(reason=ErrorReason.QUOTA_EXCEEDED, message="over")
    await s.abandon(lead.ticket, "a", err)
    (resp,) = [e for e in pub.on(TOPICS.responses) if isinstance(e, Response)]
    assert resp.request_id == "b" and resp.status == "error" and resp.error is not None
    assert resp.error.reason == ErrorReason.QUOTA_EXCEEDED
    assert table == {}
    again = await s.admit(req("c"), tier="enterprise", reply_topic=TOPICS.responses, partition=0)
    assert not again.answered and again.ticket is not None


async def test_purge_drops_the_tenants_entries_on_their_partition() -> None:
    s, _, table = stage()
    lead = await s.admit(req("a"), tier="enterprise", reply_topic=TOPICS.responses, partition=1)
    await fill_leader(s, req("a"), lead.ticket)
    assert len(table) == 1
    await s.handle(CachePurge(scope="bench", purge_id="x").to_json(), partition=0)
    assert len(table) == 1  # partition 0 does not own it
    await s.handle(CachePurge(scope="bench", purge_id="x").to_json(), partition=1)
    assert table == {}


async def test_bad_cache_record_is_skipped() -> None:
    s, pub, _ = stage()
    await s.handle(b"{not json", partition=0)
    await s.handle(CacheFill.model_construct().__class__.__name__.encode(), partition=0)
    assert pub.sent == []


async def test_semantic_hit_for_a_paraphrase_only_when_allowed() -> None:
    vectors = {"user: what is kafka?": [1.0, 0.0, 0.0], "user: what's kafka?": [0.98, 0.1, 0.0]}

    async def embed(texts: list[str]) -> np.ndarray:
        return np.array([vectors.get(t, [0.0, 0.0, 1.0]) for t in texts], dtype=np.float32)

    s, pub, _ = stage(embed)
    first = req("a", allow_semantic_cache=True)
    lead = await s.admit(first, tier="enterprise", reply_topic=TOPICS.responses, partition=0)
    assert lead.ticket is not None and lead.ticket.vector is not None and lead.ticket.semantic_ns
    await fill_leader(s, first, lead.ticket)
    hit = await s.admit(
        req("b", "what's kafka?", allow_semantic_cache=True),
        tier="enterprise",
        reply_topic=TOPICS.responses,
        partition=0,
    )
    assert hit.answered
    (resp,) = [e for e in pub.on(TOPICS.responses) if isinstance(e, Response)]
    assert resp.request_id == "b" and resp.route is not None and resp.route.reason == "semantic cache hit"
    not_allowed = await s.admit(req("c", "what's kafka?"), tier="enterprise", reply_topic=TOPICS.responses, partition=0)
    assert not not_allowed.answered
    unrelated = await s.admit(
        req("d", "bake bread", allow_semantic_cache=True), tier="enterprise", reply_topic=TOPICS.responses, partition=0
    )
    assert not unrelated.answered


async def test_a_leaders_claim_never_outlives_now_plus_its_deadline_and_grace() -> None:
    from datetime import timedelta

    from schemas.base import utc_now
    from streams.cache.store import parse_entry

    s, _, table = stage()
    before = utc_now()
    ahead = req("a").model_copy(update={"created_at": before + timedelta(days=3650)})  # not revalidated
    lead = await s.admit(ahead, tier="enterprise", reply_topic=TOPICS.responses, partition=0)
    assert lead.ticket is not None
    entry = parse_entry(table[lead.ticket.key])
    assert entry is not None and entry.stale_at is not None
    grace = timedelta(seconds=CacheSettings().pending_grace_s)
    assert entry.stale_at <= utc_now() + timedelta(milliseconds=ahead.deadline_ms) + grace
