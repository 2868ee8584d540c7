"""The infer stage: each request of a micro-batch gets its own answer and its own cache fill, and one answer
the broker refuses does not sink the others (a fake embedder and publisher: no model, no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from schemas.cache import CacheFill, CacheTicket
from schemas.request import Request
from schemas.response import Response, RouteInfo
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent
from streams.agents.infer import InferStage
from streams.topics import Topics

TOPICS = Topics("t")
LIMIT = 4096  # bytes the fake broker accepts per record


class FakeEmbedder:
    """Each text's vector is [len(text)] * 3; its token count is len(text)."""

    async def embed_counted_async(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        return np.array([[float(len(t))] * 3 for t in texts], dtype=np.float32), [len(t) for t in texts]


class Broker:
    """Records what was published; refuses records over LIMIT bytes, as a broker's message.max.bytes does."""

    def __init__(self, down: tuple[str, ...] = (), down_once: tuple[str, ...] = ()) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.down = down
        self.down_once = down_once

    async def publish(self, topic: str, event: Any, *, key: Any = None, partition: int | None = None) -> Any:
        size = len(event.to_json())
        if size > LIMIT:
            raise MessageSizeTooLargeError(f"record of {size} bytes is over the limit")
        if topic in self.down:
            raise KafkaTimeoutError(f"{topic} did not answer")
        if topic in self.down_once:
            self.down_once = tuple(t for t in self.down_once if t != topic)
            raise KafkaTimeoutError(f"{topic} did not answer this time")
        self.sent.append((topic, event))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def routed(tenant: str, request_id: str, texts: list[str]) -> RoutedRequest:
    request = Request(request_id=request_id, tenant=tenant, kind="embedding", input=texts)
    return RoutedRequest(
        request=request,
        route=RouteInfo(provider="local", model="all-minilm-l6-v2", reason="test"),
        tier="pro",
        reply_topic=f"t.responses.{tenant}",
        cache=CacheTicket(key=f"{tenant}|k", scope=tenant, partition=0, ttl_s=60),
    )


def run(batch: list[RoutedRequest], broker: Broker | None = None) -> Broker:
    broker = broker or Broker()

    async def fallback(_: RoutedRequest) -> None:
        raise AssertionError("the model did not fail: nothing falls back")

    stage = InferStage(topics=TOPICS, embedder=FakeEmbedder, publisher=broker, fallback=fallback, worker_id="w")  # type: ignore[arg-type]
    broker.unanswered = asyncio.run(stage.handle_batch(batch))  # type: ignore[attr-defined]
    return broker


def test_requests_with_the_same_client_id_in_one_batch_each_fill_their_own_entry() -> None:
    broker = run([routed("alpha", "req-1", ["a"]), routed("beta", "req-1", ["bbbbbbb"])])
    replies = {e.tenant: e.embeddings for _, e in broker.sent if isinstance(e, Response)}
    fills = {e.ticket.scope: e.answer.embeddings for _, e in broker.sent if isinstance(e, CacheFill)}
    assert replies == fills == {"alpha": [[1.0] * 3], "beta": [[7.0] * 3]}


def test_an_answer_the_broker_refuses_becomes_a_typed_error_and_the_batch_mates_are_answered() -> None:
    big = routed("alpha", "big", ["x"] * 600)  # 600 vectors: over the fake broker's record limit
    small = routed("beta", "small", ["yy"])
    broker = run([big, small])
    replies = {e.request_id: e for _, e in broker.sent if isinstance(e, Response)}
    assert replies["small"].status == "ok" and replies["small"].embeddings == [[2.0] * 3]
    assert replies["big"].status == "error" and replies["big"].error is not None
    assert replies["big"].error.reason.value == "payload_too_large"
    fills = {e.ticket.scope: e for _, e in broker.sent if isinstance(e, CacheFill)}
    assert fills["alpha"].error is not None  # the big request's waiters get the error too
    assert sorted(e.request_id for _, e in broker.sent if isinstance(e, UsageEvent)) == ["big", "small"]


def test_a_fill_that_cannot_be_published_after_the_answer_never_answers_twice() -> None:
    """The answer went out, its fill did not: the waiters get an error fill, the requester keeps its one
    answer, and the request is not handed back for the dead-letter topic."""
    broker = run([routed("alpha", "a1", ["a"])], Broker(down_once=("t.cache",)))
    replies = [e for _, e in broker.sent if isinstance(e, Response)]
    assert [(r.request_id, r.status) for r in replies] == [("a1", "ok")]
    [fill] = [e for _, e in broker.sent if isinstance(e, CacheFill)]
    assert fill.error is not None and fill.answer is None
    assert broker.unanswered == []  # type: ignore[attr-defined]
    # the cache topic down for good: still one answer, nothing handed back (the sweep frees the waiters)
    broker = run([routed("alpha", "a1", ["a"])], Broker(down=("t.cache",)))
    assert [e.status for _, e in broker.sent if isinstance(e, Response)] == ["ok"]
    assert broker.unanswered == []  # type: ignore[attr-defined]


def test_only_requests_that_got_no_answer_at_all_are_handed_back_for_the_dead_letter_topic() -> None:
    broker = run([routed("alpha", "a1", ["a"]), routed("beta", "b1", ["b"])], Broker(down=("t.responses.beta",)))
    replies = {e.request_id: e.status for _, e in broker.sent if isinstance(e, Response)}
    assert replies == {"a1": "ok"}  # beta's reply topic is down: neither its answer nor its error went out
    unanswered = broker.unanswered  # type: ignore[attr-defined]
    assert [i for i, _ in unanswered] == [1] and isinstance(unanswered[0][1], KafkaTimeoutError)


def test_an_answer_that_fails_for_another_reason_is_not_called_too_large() -> None:
    broker = run([routed("alpha", "a1", ["a"])], Broker(down=("t.usage",)))
    [reply] = [e for _, e in broker.sent if isinstance(e, Response)]
    assert reply.status == "error" and reply.error is not None and reply.error.reason.value == "internal"
