"""The usage sink's consumer through the real broker: commits follow durable writes, a store that is
away is retried with nothing committed, bad records are dead-lettered, and a restart resumes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition

from schemas.dead_letter import DeadLetter
from schemas.usage import UsageEvent
from streams.admin import ensure_topics
from streams.analytics.errors import AnalyticsUnavailable
from streams.analytics.usage_consumer import UsageConsumer
from tests.fixtures.polling import eventually

pytestmark = [pytest.mark.kafka]


class FlakySink:
    """Refuses every write while ``away`` (ClickHouse down), then stores everything it is given."""

    def __init__(self, *, away: bool) -> None:
        self.away = away
        self.calls = 0
        self.stored: list[UsageEvent] = []

    async def write(self, events: list[UsageEvent]) -> None:
        self.calls += 1
        if self.away:
            raise AnalyticsUnavailable("store away", retry_after_s=0.2)
        self.stored.extend(events)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        probe.close()


def event(run: str, i: int) -> UsageEvent:
    return UsageEvent(
        event_id=f"{run}-{i}:1", request_id=f"{run}-{i}", tenant="acme", provider="openai", model="m", status="ok"
    )


async def test_commits_follow_durable_writes_and_bad_records_are_dead_lettered(kafka_bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    topic, group = f"uc{run}.usage", f"uc{run}-sink"
    ensure_topics(kafka_bootstrap, [topic], partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(30):
            await producer.send_and_wait(topic, event(run, i).to_json(), partition=i % 2)
        await producer.send_and_wait(topic, b"{not json", partition=0)
    finally:
        await producer.stop()

    sink = FlakySink(away=True)
    letters: list[DeadLetter] = []

    async def publish(batch: list[DeadLetter]) -> None:
        letters.extend(batch)

    def consumer(s: FlakySink) -> UsageConsumer:
        return UsageConsumer(
            bootstrap=kafka_bootstrap, topic=topic, group=group, sink=s, publish_dead_letters=publish, within_s=0.3
        )

    first = consumer(sink)
    task = asyncio.create_task(first.run())
    try:
        await eventually(lambda: sink.calls >= 3)  # the same batch, retried
        assert committed(kafka_bootstrap, group, topic, 2) == 0  # the store refused: nothing committed yet
        retries = first.stats.retries
        sink.away = False  # the store is back
        await eventually(lambda: len({e.event_id for e in sink.stored}) == 30)
        await eventually(lambda: committed(kafka_bootstrap, group, topic, 2) == 31)  # the bad record's offset too
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert first.stats.retries >= retries >= 3 and first.stats.batches >= 1
    assert [(d.reason.value, d.source_topic) for d in letters] == [("invalid_json", topic)]

    # a new consumer in the same group resumes after the commit: nothing is read twice
    async with asyncio.timeout(30):
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as more:
            await more.send_and_wait(topic, event(run, 30).to_json(), partition=1)
    again = FlakySink(away=False)
    task = asyncio.create_task(consumer(again).run())
    try:
        await eventually(lambda: len(again.stored) == 1)
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [e.event_id for e in again.stored] == [f"{run}-30:1"]


def test_sink_bench_times_a_fresh_analytics_process_catching_up(kafka_bootstrap: str, tmp_path: Path) -> None:
    from streams.analytics.bench_sink import run_sink_bench
    from streams.settings import KafkaSettings, Settings

    kafka = KafkaSettings(topic_prefix=f"sb{uuid.uuid4().hex[:6]}")
    settings = Settings(kafka_bootstrap=kafka_bootstrap, home=tmp_path, kafka=kafka)
    result = run_sink_bench(settings, events=3000, timeout_s=120)
    assert result.events == 3000 and result.batch_size == settings.analytics.batch_size
    assert result.catch_up_events_per_s > 0 and result.direct_events_per_s > 0
    assert result.catch_up_over_direct == round(result.catch_up_events_per_s / result.direct_events_per_s, 3)


async def test_an_upgrade_adopts_the_old_groups_offsets_once(kafka_bootstrap: str) -> None:
    """The sink used to read in the analytics app's group: its new group starts where that one stopped."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    from streams.analytics.rebuild import adopt_offsets

    run = uuid.uuid4().hex[:8]
    topic, old, new = f"up{run}.usage", f"up{run}-analytics", f"up{run}-usage-sink"
    ensure_topics(kafka_bootstrap, [topic], partitions=2)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        for i in range(12):
            await producer.send_and_wait(topic, event(run, i).to_json(), partition=i % 2)
    legacy = ConsumerGroupTopicPartitions(old, [TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 6)])
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.alter_consumer_group_offsets([legacy])[old].result(10)

    assert await asyncio.to_thread(adopt_offsets, kafka_bootstrap, source_group=old, group=new, topic=topic) == {
        0: 4,
        1: 6,
    }
    assert await asyncio.to_thread(adopt_offsets, kafka_bootstrap, source_group=old, group=new, topic=topic) == {}
    sink = FlakySink(away=False)

    async def publish(_: list[DeadLetter]) -> None:
        return None

    task = asyncio.create_task(
        UsageConsumer(
            bootstrap=kafka_bootstrap, topic=topic, group=new, sink=sink, publish_dead_letters=publish, within_s=0.3
        ).run()
    )
    try:
        await eventually(lambda: len(sink.stored) >= 2)
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # partition 0 held events 0, 2, ..., 10 (offsets 0-5), partition 1 events 1, ..., 11: only the tails are new
    assert sorted(e.event_id for e in sink.stored) == sorted(f"{run}-{i}:1" for i in (8, 10))
