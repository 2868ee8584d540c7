"""The usage consumer's retry loop, with a scripted consumer: while the store is away it keeps polling
with every assigned partition paused, and rewinds whatever still arrives (a partition a rebalance just
added is not paused yet), so nothing it did not write is skipped."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.usage import UsageEvent
from streams.analytics.client import translate_error
from streams.analytics.errors import AnalyticsDataError, AnalyticsQueryError, AnalyticsUnavailable
from streams.analytics.usage_consumer import UsageConsumer

TP0, TP1 = TopicPartition("u.usage", 0), TopicPartition("u.usage", 1)


class ScriptedConsumer:
    """Owns TP0; a rebalance adds TP1 during the first poll, whose records then arrive unpaused."""

    def __init__(self) -> None:
        self.owned = {TP0}
        self.paused: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.resumed: set[TopicPartition] = set()
        self.polls = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.resumed |= set(tps)
        self.paused -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        self.polls += 1
        if self.polls == 1:
            self.owned.add(TP1)  # the rebalance: TP1 is not paused, its records arrive
            return {TP1: [SimpleNamespace(offset=5), SimpleNamespace(offset=6)]}
        return {}


class StoreAway:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.written: list[UsageEvent] = []

    async def write(self, events: list[UsageEvent]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise AnalyticsUnavailable("away", retry_after_s=0.01)
        self.written.extend(events)


async def test_records_that_arrive_while_paused_are_rewound_not_skipped() -> None:
    async def no_letters(_: Any) -> None:
        return None

    sink = StoreAway(refusals=2)
    consumer = UsageConsumer(
        bootstrap="127.0.0.1:1", topic="u.usage", group="g", sink=sink, publish_dead_letters=no_letters
    )
    scripted = ScriptedConsumer()
    consumer._consumer = scripted  # type: ignore[assignment]
    event = UsageEvent(event_id="e:1", request_id="e", tenant="acme", provider="openai", model="m", status="ok")
    await consumer._write([event])
    assert sink.written == [event] and consumer.stats.retries == 2
    assert scripted.seeks == [(TP1, 5)]  # TP1's records are read again after this batch, from the first one
    assert scripted.paused == set() and scripted.resumed == {TP0, TP1}  # the second pause caught TP1 too


class Broker:
    """A consumer whose poll returns nothing; records what was committed, and when."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP0}

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def resume(self, *tps: TopicPartition) -> None:
        pass

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.log.append("commit")
        self.commits.append(offsets)


class RefusesPoison:
    """Refuses any batch holding a 'poison' event, as ClickHouse refuses a value its column cannot hold."""

    def __init__(self, log: list[str], schema_refusals: int = 0) -> None:
        self.log = log
        self.schema_refusals = schema_refusals
        self.written: list[UsageEvent] = []

    async def write(self, events: list[UsageEvent]) -> None:
        if self.schema_refusals:
            self.schema_refusals -= 1
            raise AnalyticsQueryError("usage insert failed: Table t.usage_events does not exist")
        if any(e.request_id.startswith("poison") for e in events):
            raise AnalyticsDataError("usage insert failed: Unable to create native array for column `attempt`")
        self.log.append(f"write {len(events)}")
        self.written.extend(events)


def record(offset: int, payload: bytes) -> Any:
    return SimpleNamespace(topic=TP0.topic, partition=TP0.partition, offset=offset, value=payload)


def usage_json(request_id: str, **extra: Any) -> bytes:
    event = {"event_id": f"{request_id}:1", "request_id": request_id, "tenant": "acme"}
    return json.dumps(event | {"provider": "openai", "model": "m", "status": "ok"} | extra).encode()  # big ints too


def consumer_for(sink: Any, log: list[str], letters: list[DeadLetter]) -> tuple[UsageConsumer, Broker]:
    async def publish(batch: list[DeadLetter]) -> None:
        log.append(f"dead-letter {len(batch)}")
        letters.extend(batch)

    consumer = UsageConsumer(
        bootstrap="127.0.0.1:1", topic="u.usage", group="g", sink=sink, publish_dead_letters=publish, retry_backoff_s=0
    )
    broker = Broker(log)
    consumer._consumer = broker  # type: ignore[assignment]
    return consumer, broker


async def test_events_the_store_refuses_are_dead_lettered_alone_and_the_rest_stored_before_the_commit() -> None:
    log: list[str] = []
    letters: list[DeadLetter] = []
    sink = RefusesPoison(log)
    consumer, broker = consumer_for(sink, log, letters)
    ids = ["a", "b", "poison-1", "c", "d", "e", "poison-2", "f"]
    await consumer._handle([record(i, usage_json(rid)) for i, rid in enumerate(ids)])
    assert sorted(e.request_id for e in sink.written) == ["a", "b", "c", "d", "e", "f"]
    assert [(d.offset, d.reason, d.request_id) for d in letters] == [
        (2, DeadLetterReason.PROCESSING_FAILED, None),
        (6, DeadLetterReason.PROCESSING_FAILED, None),
    ]
    assert "native array for column `attempt`" in letters[0].detail
    assert base64.b64decode(letters[0].payload_b64) == usage_json("poison-1")
    assert log[-2:] == ["dead-letter 2", "commit"] and broker.commits == [{TP0: 8}]
    assert consumer.stats.dead_letters == 2 and consumer.stats.events == 8


async def test_a_value_past_its_column_type_is_dead_lettered_at_decode_with_its_reason() -> None:
    log: list[str] = []
    letters: list[DeadLetter] = []
    sink = RefusesPoison(log)
    consumer, broker = consumer_for(sink, log, letters)
    records = [
        record(0, usage_json("a")),
        record(1, usage_json("big-attempt", attempt=70_000)),  # attempt is UInt16
        record(2, usage_json("big-tokens", input_tokens=2**64)),  # UInt64
        record(3, usage_json("big-cost", cost_usd=2e9)),  # Decimal(18, 9)
        record(4, usage_json("b", attempt=65_535, input_tokens=2**64 - 1, cost_usd=999_999_999.5)),
    ]
    await consumer._handle(records)
    assert [e.request_id for e in sink.written] == ["a", "b"]
    assert [(d.offset, d.reason) for d in letters] == [(i, DeadLetterReason.SCHEMA_VIOLATION) for i in (1, 2, 3)]
    assert broker.commits == [{TP0: 5}]


async def test_a_refusal_that_is_not_about_the_rows_is_retried_not_fatal_and_nothing_is_dead_lettered() -> None:
    log: list[str] = []
    letters: list[DeadLetter] = []
    sink = RefusesPoison(log, schema_refusals=3)  # until someone runs `analytics migrate`
    consumer, _ = consumer_for(sink, log, letters)
    await consumer._handle([record(0, usage_json("a")), record(1, usage_json("b"))])
    assert [e.request_id for e in sink.written] == ["a", "b"] and letters == []
    assert consumer.stats.retries == 3 and log == ["write 2", "commit"]


def test_a_value_the_client_cannot_encode_is_a_data_error() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError

    assert isinstance(
        translate_error(DataError("Unable to create native array for column `attempt`"), "x"), AnalyticsDataError
    )
    refused = translate_error(DatabaseError("Code: 60. Unknown table"), "x")
    assert isinstance(refused, AnalyticsQueryError) and not isinstance(refused, AnalyticsDataError)
