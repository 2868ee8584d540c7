"""streams.ops.lag: lag arithmetic, and consumer_lag's use of the Kafka consumer (a fake one: no broker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from streams.errors import AifleetError
from streams.ops.lag import PartitionLag, compute_lag, consumer_lag


class FakeConsumer:
    """Answers like confluent_kafka's Consumer for a cluster described by plain dicts."""

    def __init__(self, partitions: dict[str, int], committed: dict, starts: dict, ends: dict) -> None:
        self.partitions = partitions
        self.committed_offsets = committed
        self.starts = starts
        self.ends = ends
        self.closed = False
        self.watermark_calls = 0

    def list_topics(self, timeout: float) -> Any:
        topics = {
            t: SimpleNamespace(partitions={p: object() for p in range(n)}, error=None)
            for t, n in self.partitions.items()
        }
        return SimpleNamespace(topics=topics)

    def committed(self, tps: list, timeout: float) -> list:
        from confluent_kafka import TopicPartition

        return [
            TopicPartition(tp.topic, tp.partition, self.committed_offsets.get((tp.topic, tp.partition), -1001))
            for tp in tps
        ]

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self.watermark_calls += 1
        key = (tp.topic, tp.partition)
        return self.starts[key], self.ends[key]

    def close(self) -> None:
        self.closed = True


def test_partition_lag_arithmetic() -> None:
    assert PartitionLag("t", 0, committed=3, start=0, end=10).lag == 7
    assert PartitionLag("t", 0, committed=None, start=4, end=10).lag == 6  # never committed: from log start
    assert PartitionLag("t", 0, committed=1, start=4, end=10).lag == 6  # committed below retention
    assert PartitionLag("t", 0, committed=12, start=0, end=10).lag == 0  # never negative


def test_compute_lag_sorts_and_treats_negative_as_uncommitted() -> None:
    ends = {("b", 0): 5, ("a", 1): 9, ("a", 0): 3}
    lags = compute_lag({("a", 0): 3, ("a", 1): -1001}, {("a", 1): 2}, ends)
    assert [(p.topic, p.partition, p.committed, p.lag) for p in lags] == [
        ("a", 0, 3, 0),
        ("a", 1, None, 7),
        ("b", 0, None, 5),
    ]


def test_consumer_lag_reads_committed_start_and_end_offsets() -> None:
    consumer = FakeConsumer(
        partitions={"aifleet.requests": 2, "aifleet.routed": 4},
        committed={("aifleet.requests", 0): 90, ("aifleet.routed", 3): 10},
        starts={**{("aifleet.requests", p): 0 for p in range(2)}, **{("aifleet.routed", p): 0 for p in range(4)}},
        ends={
            ("aifleet.requests", 0): 100,
            ("aifleet.requests", 1): 50,
            **{("aifleet.routed", p): 10 for p in range(4)},
        },
    )
    report = consumer_lag(
        "ignored:9092", "aifleet-aifleet", ["aifleet.requests", "aifleet.routed", "aifleet.absent"], consumer=consumer
    )
    assert consumer.watermark_calls == 6
    assert not consumer.closed  # a consumer passed in belongs to the caller
    assert report.missing_topics == ["aifleet.absent"]
    assert report.by_topic() == {"aifleet.requests": 10 + 50, "aifleet.routed": 30}
    assert report.total == 90
    assert report.partition_counts() == {"aifleet.requests": 2, "aifleet.routed": 4}
    assert report.max_partitions == 4


def test_consumer_lag_of_missing_topics_is_empty() -> None:
    consumer = FakeConsumer(partitions={}, committed={}, starts={}, ends={})
    report = consumer_lag("x:1", "g", ["nope"], consumer=consumer)
    assert report.total == 0
    assert report.missing_topics == ["nope"]
    assert report.max_partitions == 0


def test_consumer_lag_wraps_client_errors() -> None:
    class Broken(FakeConsumer):
        def list_topics(self, timeout: float) -> Any:
            raise RuntimeError("KafkaError{code=_TRANSPORT}")

    with pytest.raises(AifleetError, match="could not read consumer lag of group 'g'"):
        consumer_lag("x:1", "g", ["t"], consumer=Broken({}, {}, {}, {}))
