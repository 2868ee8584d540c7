"""Cache keys, the entry state machine and the semantic index: the rules, without a broker."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from schemas.base import utc_now
from schemas.cache import CachedAnswer, CacheEntry, CacheFill, CacheTicket, Waiter
from schemas.errors import ErrorInfo, ErrorReason
from schemas.request import Message, Request
from streams.cache import entry as t
from streams.cache.keys import cache_keys, is_deterministic
from streams.cache.semantic import SemanticIndex


def req(content: str = "hello", **fields: object) -> Request:
    base: dict[str, object] = {"request_id": "r1", "tenant": "acme", "temperature": 0}
    base.update(fields)
    return Request(messages=[Message(role="user", content=content)], **base)  # type: ignore[arg-type]


# -- keys ---------------------------------------------------------------------------------------
def test_only_deterministic_requests_are_cached_unless_they_opt_in() -> None:
    assert cache_keys(req(), scope="acme", tier="pro") is not None
    sampled = req(temperature=0.7)
    assert not is_deterministic(sampled)
    assert cache_keys(sampled, scope="acme", tier="pro") is None
    assert cache_keys(req(temperature=None), scope="acme", tier="pro") is None
    assert cache_keys(req(temperature=0.7, cache_nondeterministic=True), scope="acme", tier="pro") is not None
    assert cache_keys(req(cache_bypass=True), scope="acme", tier="pro") is None


def test_key_depends_on_what_determines_the_answer_and_nothing_else() -> None:
    k = cache_keys(req(), scope="acme", tier="pro")
    assert k is not None
    same = cache_keys(
        req(request_id="other", deadline_ms=5, metadata={"x": "y"}, stream=True), scope="acme", tier="pro"
    )
    assert same is not None and same.key == k.key
    for changed in (req("hello!"), req(max_tokens=10), req(model="gpt-4o"), req(quality_floor=0.9)):
        other = cache_keys(changed, scope="acme", tier="pro")
        assert other is not None and other.key != k.key
    other_tier = cache_keys(req(), scope="acme", tier="enterprise")
    assert other_tier is not None and other_tier.key != k.key


def test_tenants_never_share_a_key_unless_they_share_a_scope() -> None:
    a = cache_keys(req(tenant="acme"), scope="acme", tier="pro")
    b = cache_keys(req(tenant="globex"), scope="globex", tier="pro")
    assert a is not None and b is not None and a.key != b.key
    shared_a = cache_keys(req(tenant="acme"), scope="shared:team", tier="pro")
    shared_b = cache_keys(req(tenant="globex"), scope="shared:team", tier="pro")
    assert shared_a is not None and shared_b is not None and shared_a.key == shared_b.key


def test_idempotency_key_applies_whatever_the_sampling_and_content() -> None:
    a = cache_keys(req("one", temperature=1.0, idempotency_key="order-7"), scope="acme", tier="pro")
    b = cache_keys(req("two", temperature=0.2, idempotency_key="order-7", cache_bypass=True), scope="acme", tier="pro")
    assert a is not None and b is not None and a.idempotent and a.key == b.key


def test_a_requested_model_shares_a_key_only_within_a_tier_and_floor() -> None:
    # the requested model is a preference: a free request for gpt-4o may be served by another model
    pro = cache_keys(req(model="gpt-4o"), scope="acme", tier="pro")
    free = cache_keys(req(model="gpt-4o"), scope="acme", tier="free")
    floored = cache_keys(req(model="gpt-4o", quality_floor=0.9), scope="acme", tier="pro")
    assert pro is not None and free is not None and floored is not None
    assert len({pro.key, free.key, floored.key}) == 3


def test_idempotency_keys_stay_the_tenants_own_in_a_shared_scope() -> None:
    a = cache_keys(req("acme's minutes", tenant="acme", idempotency_key="order-1"), scope="shared:team", tier="pro")
    g = cache_keys(req("a haiku", tenant="globex", idempotency_key="order-1"), scope="shared:team", tier="pro")
    assert a is not None and g is not None and a.idempotent and g.idempotent
    assert a.key != g.key
    assert a.key.startswith("shared:team|") and g.key.startswith("shared:team|")  # same scope, same owner


def test_semantic_namespace_only_when_allowed() -> None:
    plain = cache_keys(req(), scope="acme", tier="pro")
    allowed = cache_keys(req(allow_semantic_cache=True), scope="acme", tier="pro")
    assert plain is not None and plain.semantic_ns is None
    assert allowed is not None and allowed.semantic_ns is not None and allowed.semantic_ns.startswith("acme|")
    reworded = cache_keys(req("hi there", allow_semantic_cache=True), scope="acme", tier="pro")
    assert reworded is not None and reworded.semantic_ns == allowed.semantic_ns and reworded.key != allowed.key


# -- the entry state machine ---------------------------------------------------------------------
def waiter(rid: str) -> Waiter:
    return Waiter(request_id=rid, tenant="acme", reply_topic="p.responses")


NOW = utc_now()
LATER = NOW + timedelta(seconds=30)
TICKET = CacheTicket(key="acme|k", scope="acme", partition=2, ttl_s=60)
ANSWER = CachedAnswer(provider="openai", model="gpt-4o-mini", output="Echo: hi", cost_usd=0.001)


def claim(entry: CacheEntry | None, rid: str, now=NOW) -> tuple[t.Change, t.Claim]:  # type: ignore[no-untyped-def]
    return t.claim(entry, key="acme|k", scope="acme", partition=2, waiter=waiter(rid), now=now, lead_until=LATER)


def test_first_request_leads_the_next_ones_wait_then_all_are_answered() -> None:
    change, first = claim(None, "a")
    assert first.outcome == "lead" and change.store is not None
    change, second = claim(change.store, "b")
    assert second.outcome == "join"
    assert change.store is not None
    change2, third = claim(change.store, "c")
    assert third.outcome == "join" and change2.store is not None
    assert [w.request_id for w in change2.store.waiters] == ["b", "c"]
    filled = t.fill(change2.store, CacheFill(ticket=TICKET, leader="a", answer=ANSWER), NOW)
    assert [w.request_id for w in filled.waiters] == ["b", "c"]
    assert filled.store is not None and filled.store.state == "done" and filled.store.answer == ANSWER
    assert filled.store.stale_at == NOW + timedelta(seconds=60)
    _, later = claim(filled.store, "d", now=NOW + timedelta(seconds=59))
    assert later.outcome == "hit"
    _, expired = claim(filled.store, "e", now=NOW + timedelta(seconds=61))
    assert expired.outcome == "lead"


def test_redelivered_records_do_not_multiply_calls_or_waiters() -> None:
    change, _ = claim(None, "a")
    again, lead = claim(change.store, "a")
    assert lead.outcome == "lead" and again.store is None  # the leader's record replayed: it leads again
    joined, _ = claim(change.store, "b")
    replay, j = claim(joined.store, "b")
    assert j.outcome == "join" and replay.store is None


def test_a_lost_leader_is_taken_over_and_its_waiters_kept() -> None:
    change, _ = claim(None, "a")
    joined, _ = claim(change.store, "b")
    taken, c = claim(joined.store, "c", now=LATER + timedelta(seconds=1))
    assert c.outcome == "lead" and taken.store is not None and taken.store.leader == "c"
    assert [w.request_id for w in taken.store.waiters] == ["b"]
    stale_failure = t.fill(taken.store, CacheFill(ticket=TICKET, leader="a", error=_err()), NOW)
    assert stale_failure == t.Change()  # the old leader's failure must not drop the new leader's entry


def _err() -> ErrorInfo:
    return ErrorInfo(reason=ErrorReason.PROVIDER_UNAVAILABLE, message="down", retryable=True)


def test_a_failed_leader_releases_its_waiters_and_caches_nothing() -> None:
    change, _ = claim(None, "a")
    joined, _ = claim(change.store, "b")
    failed = t.fill(joined.store, CacheFill(ticket=TICKET, leader="a", error=_err()), NOW)
    assert failed.delete and [w.request_id for w in failed.waiters] == ["b"]


def test_purge_only_on_the_owning_partition_and_only_the_scope() -> None:
    done = t.fill(None, CacheFill(ticket=TICKET, leader="a", answer=ANSWER), NOW).store
    assert done is not None
    assert t.purgeable(done, scope="acme", partition=2, expired_only=False, now=NOW)
    assert not t.purgeable(done, scope="acme", partition=1, expired_only=False, now=NOW)
    assert not t.purgeable(done, scope="globex", partition=2, expired_only=False, now=NOW)
    assert t.purgeable(done, scope="*", partition=2, expired_only=False, now=NOW)
    assert not t.purgeable(done, scope="*", partition=2, expired_only=True, now=NOW)
    assert t.purgeable(done, scope="*", partition=2, expired_only=True, now=NOW + timedelta(seconds=61))
    pending = claim(None, "x")[0].store
    assert pending is not None
    assert not t.purgeable(pending, scope="acme", partition=2, expired_only=False, now=NOW)
    assert t.purgeable(pending, scope="*", partition=2, expired_only=True, now=LATER + timedelta(seconds=1))


# -- semantic index ---------------------------------------------------------------------------------
def test_semantic_index_matches_at_or_above_threshold_only() -> None:
    idx = SemanticIndex(threshold=0.9, max_per_namespace=3)
    idx.add("acme|ns", "acme|k1", [1.0, 0.0])
    idx.add("acme|ns", "acme|k2", [0.0, 1.0])
    m = idx.search("acme|ns", [0.95, 0.1])
    assert m is not None and m.key == "acme|k1" and m.score == pytest.approx(0.9945, abs=1e-3)
    assert idx.search("acme|ns", [0.7, 0.7]) is None  # cos 0.707: below
    assert idx.search("globex|ns", [1.0, 0.0]) is None  # another namespace sees nothing
    idx.remove("acme|ns", "acme|k1")
    assert idx.search("acme|ns", [1.0, 0.0]) is None


def test_semantic_index_keeps_the_newest_entries() -> None:
    idx = SemanticIndex(threshold=0.5, max_per_namespace=2)
    for i, v in enumerate(np.eye(3)):
        idx.add("s|ns", f"s|k{i}", v)
    assert idx.size("s|ns") == 2
    assert idx.search("s|ns", [1.0, 0.0, 0.0]) is None
    idx.drop_scope("s")
    assert idx.size("s|ns") == 0


def test_semantic_index_ring_replaces_removes_and_grows() -> None:
    idx = SemanticIndex(threshold=0.99, max_per_namespace=100)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(250, 16))
    for i, v in enumerate(vectors):  # grows 64 -> 100, then overwrites the oldest
        idx.add("s|ns", f"s|k{i}", v)
    assert idx.size("s|ns") == 100
    assert idx.search("s|ns", vectors[149]) is None  # evicted
    for i in (150, 200, 249):
        m = idx.search("s|ns", vectors[i])
        assert m is not None and m.key == f"s|k{i}" and m.score == pytest.approx(1.0, abs=1e-5)
    idx.remove("s|ns", "s|k200")
    assert idx.search("s|ns", vectors[200]) is None and idx.size("s|ns") == 99
    idx.add("s|ns", "s|k150", vectors[7])  # same key, new vector: replaced in place
    assert idx.search("s|ns", vectors[150]) is None and idx.search("s|ns", vectors[7]).key == "s|k150"  # type: ignore[union-attr]
    assert idx.size("s|ns") == 99
    for i in range(250, 350):  # a full turn of the ring: the hole is reused, the size stays at the limit
        idx.add("s|ns", f"s|k{i}", rng.normal(size=16))
    assert idx.size("s|ns") == 100
