"""The client without a broker: delivery failures, timeouts and answered ids, with a fake producer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from schemas.chunk import StreamChunk
from schemas.request import Message, Request
from schemas.response import Response
from streams.client import AifleetClient, ClientDeliveryError, ClientTimeout


class FakeProducer:
    """``send`` raises on the calls listed in ``raise_on``; ``fail_delivery`` makes the broker refuse."""

    def __init__(self, *, raise_on: tuple[int, ...] = (), fail_delivery: bool = False) -> None:
        self.calls = 0
        self.raise_on = raise_on
        self.fail_delivery = fail_delivery

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        self.calls += 1
        if self.calls in self.raise_on:
            raise KafkaTimeoutError("buffer full")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_delivery:
            fut.set_exception(MessageSizeTooLargeError("broker refused"))
        else:
            fut.set_result(None)
        return fut


def client(producer: FakeProducer, **kwargs: Any) -> AifleetClient:
    c = AifleetClient("unused:9092", **kwargs)
    c._producer = producer  # type: ignore[assignment]
    return c


def req(rid: str, **fields: Any) -> Request:
    return Request(request_id=rid, tenant="acme", messages=[Message(role="user", content="hi")], **fields)


def answer(c: AifleetClient, rid: str, status: str = "ok") -> None:
    c._on_response(Response(request_id=rid, status=status).to_json())  # type: ignore[arg-type]


async def test_a_send_that_raises_is_a_delivery_error_and_the_retry_is_sent() -> None:
    p = FakeProducer(raise_on=(1,))
    c = client(p)
    with pytest.raises(ClientDeliveryError):
        await c.submit(req("r1"))
    assert c._waiting == {}
    fut = await c.submit(req("r1"))  # the application retries
    assert p.calls == 2
    answer(c, "r1")
    assert (await fut).request_id == "r1"


async def test_stream_raises_the_delivery_error_and_forgets_the_request() -> None:
    c = client(FakeProducer(fail_delivery=True))
    with pytest.raises(ClientDeliveryError):
        async with asyncio.timeout(60):  # a safety net only: a regression fails here instead of hanging
            async for _ in c.stream(req("s1"), timeout=3600):
                pass
    assert c._waiting == {} and c._chunks == {}


async def test_stream_without_an_answer_raises_client_timeout_and_forgets_the_request() -> None:
    c = client(FakeProducer())
    with pytest.raises(ClientTimeout):
        async for _ in c.stream(req("s2"), timeout=0):
            pass
    assert c._waiting == {} and c._chunks == {}


async def test_stream_yields_chunks_in_order_then_the_response() -> None:
    c = client(FakeProducer())
    got: list[Any] = []

    async def feed() -> None:
        await asyncio.sleep(0)
        for seq, final in ((1, True), (0, False)):
            c._on_chunk(StreamChunk(request_id="s3", seq=seq, delta=str(seq), final=final).to_json())
        answer(c, "s3")

    feeder = asyncio.create_task(feed())
    async for item in c.stream(req("s3"), timeout=3600):
        got.append(item)
    await feeder
    assert [type(i).__name__ for i in got] == ["StreamChunk", "StreamChunk", "Response"]
    assert [i.seq for i in got[:2]] == [0, 1]
    assert c._waiting == {} and c._chunks == {}


async def test_answered_ids_are_bounded_and_an_answered_id_can_be_asked_again() -> None:
    c = client(FakeProducer(), remember_answered=2)
    for i in range(3):
        fut = await c.submit(req(f"q{i}"))
        answer(c, f"q{i}")
        await fut
    assert list(c._done) == ["q1", "q2"]  # the oldest is forgotten
    answer(c, "q2")
    assert c.duplicates == 1
    fut = await c.submit(req("q2"))  # the same id asked again: its new answer is not a duplicate
    answer(c, "q2", status="error")
    assert (await fut).status == "error" and c.duplicates == 1
