"""Rejected records: dead-lettered first, answered on a topic that exists, and never left unacked."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Iterable
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError, UnknownTopicOrPartitionError
from pydantic import ValidationError

from schemas.base import Event
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.errors import ErrorReason
from schemas.request import Request
from schemas.response import Response
from streams.agents.gate import GateStage, Record
from streams.codec import peek_ids
from streams.errors import SchemaViolation
from streams.rejects import TopicDirectory, crash_handler, send_dead_letter, send_reply
from streams.topics import Topics
from streams.windowed import process_windowed
from tests.fixtures.recording import RecordingPublisher

TOPICS = Topics("p")
GOOD = {"request_id": "r1", "tenant": "acme", "messages": [{"role": "user", "content": "hi"}]}
EXISTING = {*TOPICS.all(), "p.responses.acme.mine"}


class Broker(RecordingPublisher):
    """Refuses what a broker with auto-create off and a record limit refuses; ``hang`` never answers."""

    def __init__(self, existing: set[str] = EXISTING, *, max_record: int = 1_048_588, hang: str = "") -> None:
        super().__init__()
        self.existing = existing
        self.max_record = max_record
        self.hang = hang

    async def publish(
        self, topic: str, event: Event, *, key: str | None = None, partition: int | None = None
    ) -> Awaitable[object]:
        if topic == self.hang:
            return asyncio.get_running_loop().create_future()  # never resolves
        if topic not in self.existing:
            raise UnknownTopicOrPartitionError()
        if len(event.to_json()) > self.max_record:
            raise MessageSizeTooLargeError()
        return await super().publish(topic, event, key=key, partition=partition)


def directory(names: set[str] = EXISTING) -> TopicDirectory:
    async def fetch() -> set[str]:
        return names

    return TopicDirectory(fetch, always=TOPICS.all())


def test_reply_topic_must_be_a_legal_kafka_name() -> None:
    with pytest.raises(ValidationError, match="reply_topic"):
        Request.model_validate({**GOOD, "reply_topic": "p.responses.acme.bad topic!"})
    assert Request.model_validate({**GOOD, "reply_topic": "p.responses.acme.ok_1-x"}).reply_topic


def test_peeked_ids_must_match_the_request_patterns() -> None:
    ids = peek_ids({"request_id": "r 1", "tenant": "Acme.Other", "reply_topic": "p.responses.x y"})
    assert ids == {"request_id": None, "tenant": None, "reply_topic": None}
    assert peek_ids(GOOD)["tenant"] == "acme"


async def test_topic_directory_fetches_only_for_unknown_names_and_sees_new_topics() -> None:
    names = {"a"}

    async def fetch() -> Iterable[str]:
        return set(names)

    d = TopicDirectory(fetch, always=["shared"])
    assert await d.exists("shared") and d.fetches == 0
    assert await d.exists("a") and d.fetches == 1
    assert await d.exists("a") and d.fetches == 1  # known: no fetch
    assert not await d.exists("b") and d.fetches == 2
    names.add("b")  # a client created it since
    assert await d.exists("b") and d.fetches == 3


async def test_topic_directory_counts_a_failed_fetch_as_missing() -> None:
    async def fetch() -> Iterable[str]:
        raise RuntimeError("broker unreachable")

    assert not await TopicDirectory(fetch).exists("p.responses.acme")


async def test_reply_to_a_missing_or_failing_topic_goes_to_the_shared_one() -> None:
    resp = Response(request_id="r1", tenant="acme", status="error")
    missing = Broker()  # the directory says the topic exists, the broker refuses it (deleted since)
    got = await send_reply(missing, TOPICS, resp, requested="p.responses.acme.typo", exists=None)
    assert got == "p.responses" and missing.on("p.responses") == [resp]
    hanging = Broker(hang="p.responses.acme.mine")
    got = await send_reply(hanging, TOPICS, resp, requested="p.responses.acme.mine", exists=None, timeout_s=0)
    assert got == "p.responses" and hanging.on("p.responses") == [resp]
    checked = Broker()  # with the directory, a missing topic is never tried at all
    got = await send_reply(checked, TOPICS, resp, requested="p.responses.acme.typo", exists=directory().exists)
    assert got == "p.responses"
    got = await send_reply(checked, TOPICS, resp, requested="p.responses.acme.mine", exists=directory().exists)
    assert got == "p.responses.acme.mine"


def gate(pub: Broker) -> GateStage:
    none = cast(Any, None)  # routing is never reached by a rejected record
    return GateStage(
        topics=TOPICS,
        router=none,
        ledger=none,
        available=lambda _p: True,
        load=lambda _p: 0.0,
        publisher=pub,
        max_request_bytes=1_048_576,
        dlq_max_payload_bytes=700_000,
        default_tier="free",
        reply_exists=directory().exists,
    )


@pytest.mark.parametrize("fields", [{"max_tokens": -1}, {}])
async def test_gate_answers_a_request_naming_a_missing_reply_topic_on_the_shared_topic(fields: dict) -> None:
    pub = Broker()
    raw = orjson.dumps({**GOOD, **fields, "reply_topic": "p.responses.acme.typo"})
    await gate(pub).handle(Record(value=raw, topic="p.requests", partition=0, offset=3, key=b"acme"))
    [letter] = pub.on("p.dlq")
    [reply] = pub.on("p.responses")
    assert isinstance(letter, DeadLetter) and isinstance(reply, Response)
    assert letter.request_id == "r1" and reply.request_id == "r1" and reply.error is not None
    if not fields:  # valid but for the missing topic
        assert reply.error.reason == ErrorReason.FORBIDDEN_REPLY_TOPIC
        assert "does not exist" in reply.error.message


class Ev:
    def __init__(self, value: bytes) -> None:
        self.value = value
        self.key = b"acme"
        self.message = SimpleNamespace(topic="p.requests", partition=1, offset=9)
        self.acked = False

    def ack(self) -> None:
        self.acked = True


class Stream:
    def __init__(self, events: list[Ev]) -> None:
        self._events = events

    def noack(self) -> Stream:
        return self

    async def events(self) -> Any:
        for e in self._events:
            yield e


@pytest.mark.parametrize("reply_topic", ["p.responses.acme.typo", "p.responses.acme.mine"])
async def test_crash_handler_acks_once_the_letter_is_written_whatever_the_reply_topic(reply_topic: str) -> None:
    pub = Broker(existing=set(TOPICS.all()))  # neither tenant topic is writable
    ev = Ev(orjson.dumps({**GOOD, "reply_topic": reply_topic}))

    async def handler(_event: Any) -> None:
        raise KeyError("boom")

    on_crash = crash_handler(pub, TOPICS, max_payload=700_000, exists=directory().exists)
    await process_windowed(Stream([ev]), handler, max_in_flight=2, on_crash=on_crash)
    assert ev.acked
    [letter] = pub.on("p.dlq")
    assert isinstance(letter, DeadLetter) and letter.reason == DeadLetterReason.PROCESSING_FAILED
    assert (letter.request_id, letter.tenant) == ("r1", "acme") and "KeyError" in letter.detail
    [reply] = pub.on("p.responses")
    assert isinstance(reply, Response) and reply.error is not None
    assert reply.error.message == "processing failed: KeyError"  # the reply names the type only


async def test_a_usage_or_cache_record_that_fails_is_dead_lettered_acked_and_not_answered() -> None:
    """The settle and cache agents: a record that fails no longer freezes its partition's commit, and the
    client, answered already, gets no error for it."""
    pub = Broker()
    usage = orjson.dumps({"event_id": "r1:1", "request_id": "r1", "tenant": "acme", "provider": "p", "model": "m"})
    events = [Ev(usage), Ev(b"{}")]

    async def handler(event: Any) -> None:
        if event is events[0]:
            raise KeyError("boom")

    on_crash = crash_handler(pub, TOPICS, max_payload=700_000, exists=None, answer=False)
    await process_windowed(Stream(events), handler, max_in_flight=1, on_crash=on_crash)
    assert all(e.acked for e in events)
    [letter] = pub.on("p.dlq")
    assert isinstance(letter, DeadLetter) and letter.request_id == "r1"
    assert pub.on("p.responses") == []


async def test_a_record_whose_letter_cannot_be_written_stays_unacked() -> None:
    pub = Broker(existing=set())  # not even the DLQ

    async def handler(_event: Any) -> None:
        raise KeyError("boom")

    ev = Ev(orjson.dumps(GOOD))
    on_crash = crash_handler(pub, TOPICS, max_payload=700_000, exists=None)
    await process_windowed(Stream([ev]), handler, max_in_flight=1, on_crash=on_crash)
    assert not ev.acked


async def test_a_letter_too_large_for_the_broker_is_cut_down_and_sent_again() -> None:
    pub = Broker(max_record=200_000)
    raw = orjson.dumps({**GOOD, "max_tokens": -1, "messages": [{"role": "user", "content": "x" * 900_000}]})
    exc = SchemaViolation("max_tokens", request_id="r1", tenant="acme")
    letter = await send_dead_letter(
        pub, "p.dlq", exc, raw, source_topic="p.requests", partition=0, offset=1, max_payload=4_194_304
    )
    assert pub.on("p.dlq") == [letter]
    assert letter.payload_truncated and letter.payload_size == len(raw)
    assert raw.startswith(base64.b64decode(letter.payload_b64))


def routed_record(reply_topic: str, **extra: Any) -> bytes:
    from schemas.response import RouteInfo
    from schemas.routed import RoutedRequest

    routed = RoutedRequest(
        request=Request.model_validate(GOOD),
        route=RouteInfo(provider="openai", model="gpt-4o-mini", reason="x"),
        tier="pro",
        reply_topic=reply_topic,
    )
    return orjson.dumps({**orjson.loads(routed.to_json()), **extra})


@pytest.mark.parametrize(
    ("reply_topic", "answered_on"),
    [("p.responses.acme.mine", "p.responses.acme.mine"), ("p.responses.acme.typo", "p.responses")],
)
async def test_an_invalid_routed_record_is_dead_lettered_with_its_ids_and_answered(
    reply_topic: str, answered_on: str
) -> None:
    from streams.rejects import read_routed

    pub = Broker()
    ev = Ev(routed_record(reply_topic, priority=5))  # a field a newer gate might add (extra="forbid")
    ev.message.topic = "p.routed"
    assert await read_routed(ev, pub, TOPICS, max_payload=700_000, exists=directory().exists) is None
    [letter] = pub.on("p.dlq")
    assert isinstance(letter, DeadLetter) and letter.reason == DeadLetterReason.SCHEMA_VIOLATION
    assert (letter.request_id, letter.tenant, letter.source_topic) == ("r1", "acme", "p.routed")
    assert "priority" in letter.detail
    [reply] = pub.on(answered_on)
    assert isinstance(reply, Response) and reply.error is not None
    assert reply.error.reason == ErrorReason.SCHEMA_VIOLATION and "priority" in reply.error.message


async def test_a_valid_routed_record_is_returned_untouched() -> None:
    from streams.rejects import read_routed

    pub = Broker()
    ev = Ev(routed_record("p.responses"))
    routed = await read_routed(ev, pub, TOPICS, max_payload=700_000, exists=None)
    assert routed is not None and routed.request.request_id == "r1" and pub.sent == []
