"""streams.ops.lag: lag arithmetic, and consumer_lag's use of the AdminClient (a fake one: no broker)."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from streams.errors import AifleetError
from streams.ops.lag import PartitionLag, client_config, compute_lag, consumer_lag
from streams.settings import KafkaSettings, Settings


def done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class FakeAdmin:
    """Answers like confluent_kafka's AdminClient for a cluster described by plain dicts."""

    def __init__(self, partitions: dict[str, int], committed: dict, starts: dict, ends: dict) -> None:
        self.partitions = partitions
        self.committed = committed
        self.starts = starts
        self.ends = ends
        self.asked_groups: list[str] = []

    def list_topics(self, timeout: float) -> Any:
        topics = {
            t: SimpleNamespace(partitions={p: object() for p in range(n)}, error=None)
            for t, n in self.partitions.items()
        }
        return SimpleNamespace(topics=topics)

    def list_consumer_group_offsets(self, request: list, request_timeout: float) -> dict:
        from confluent_kafka import TopicPartition

        out = {}
        for req in request:
            self.asked_groups.append(req.group_id)
            tps = [
                TopicPartition(tp.topic, tp.partition, self.committed.get((tp.topic, tp.partition), -1001))
                for tp in req.topic_partitions
            ]
            out[req.group_id] = done(SimpleNamespace(group_id=req.group_id, topic_partitions=tps))
        return out

    def list_offsets(self, specs: dict, request_timeout: float) -> dict:
        from confluent_kafka.admin import OffsetSpec

        out = {}
        for tp, spec in specs.items():
            table = self.ends if isinstance(spec, type(OffsetSpec.latest())) else self.starts
            out[tp] = done(SimpleNamespace(offset=table[(tp.topic, tp.partition)]))
        return out


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
    admin = FakeAdmin(
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
        "ignored:9092", "aifleet-aifleet", ["aifleet.requests", "aifleet.routed", "aifleet.absent"], admin=admin
    )
    assert admin.asked_groups == ["aifleet-aifleet"]
    assert report.missing_topics == ["aifleet.absent"]
    assert report.by_topic() == {"aifleet.requests": 10 + 50, "aifleet.routed": 30}
    assert report.total == 90
    assert report.partition_counts() == {"aifleet.requests": 2, "aifleet.routed": 4}
    assert report.max_partitions == 4


def test_consumer_lag_of_missing_topics_is_empty() -> None:
    admin = FakeAdmin(partitions={}, committed={}, starts={}, ends={})
    report = consumer_lag("x:1", "g", ["nope"], admin=admin)
    assert report.total == 0
    assert report.missing_topics == ["nope"]
    assert report.max_partitions == 0


def test_consumer_lag_wraps_client_errors() -> None:
    class Broken(FakeAdmin):
        def list_topics(self, timeout: float) -> Any:
            raise RuntimeError("KafkaError{code=_TRANSPORT}")

    with pytest.raises(AifleetError, match="could not read consumer lag of group 'g'"):
        consumer_lag("x:1", "g", ["t"], admin=Broken({}, {}, {}, {}))


def test_client_config_carries_sasl_settings() -> None:
    plain = client_config(Settings(kafka_bootstrap="k1:9092,k2:9092"))
    assert plain == {"bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "PLAINTEXT"}
    s = Settings(
        kafka=KafkaSettings(
            bootstrap="k:9093",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="aifleet",
            sasl_password=SecretStr("pw"),
        )
    )
    conf = client_config(s, "override:9093")
    assert conf == {
        "bootstrap.servers": "override:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "aifleet",
        "sasl.password": "pw",
    }
