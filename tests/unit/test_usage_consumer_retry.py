"""The usage consumer's retry loop, with a scripted consumer: while the store is away it keeps polling
with every assigned partition paused, and rewinds whatever still arrives (a partition a rebalance just
added is not paused yet), so nothing it did not write is skipped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from schemas.usage import UsageEvent
from streams.analytics.errors import AnalyticsUnavailable
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
