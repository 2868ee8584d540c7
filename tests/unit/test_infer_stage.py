"""The infer stage: each request of a micro-batch gets its own answer and its own cache fill, and one answer
the broker refuses does not sink the others (a fake embedder and publisher: no model, no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

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

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, topic: str, event: Any, *, key: Any = None, partition: int | None = None) -> Any:
        size = len(event.to_json())
        if size > LIMIT:
            raise ValueError(f"record of {size} bytes is over the limit")
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


def run(batch: list[RoutedRequest]) -> Broker:
    broker = Broker()

    async def fallback(_: RoutedRequest) -> None:
        raise AssertionError("the model did not fail: nothing falls back")

    stage = InferStage(topics=TOPICS, embedder=FakeEmbedder, publisher=broker, fallback=fallback, worker_id="w")  # type: ignore[arg-type]
    asyncio.run(stage.handle_batch(batch))
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
