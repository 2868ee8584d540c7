"""Consumer lag of a group: committed offsets against the partitions' end offsets.

Lag of a partition is ``end - committed``. A partition the group has never committed counts from the
log start (``end - start``): aifleet's consumers start at ``earliest``, so everything still retained
is waiting for them. That is also what KEDA's Kafka scaler reports with ``offsetResetPolicy: earliest``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.errors import AifleetError

# librdkafka's "no offset" sentinel (OFFSET_INVALID): the group has not committed this partition.
NO_OFFSET = -1001

TP = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition's position for one group."""

    topic: str
    partition: int
    committed: int | None
    start: int
    end: int

    @property
    def lag(self) -> int:
        """Records the group still has to consume (never negative)."""
        base = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - base)


@dataclass(frozen=True, slots=True)
class LagReport:
    """A group's lag over some topics, partition by partition."""

    group: str
    partitions: list[PartitionLag] = field(default_factory=list)
    missing_topics: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def by_topic(self) -> dict[str, int]:
        """Total lag per topic."""
        out: dict[str, int] = {}
        for p in self.partitions:
            out[p.topic] = out.get(p.topic, 0) + p.lag
        return out

    def partition_counts(self) -> dict[str, int]:
        """Partitions per topic, as the cluster reported them."""
        out: dict[str, int] = {}
        for p in self.partitions:
            out[p.topic] = out.get(p.topic, 0) + 1
        return out

    @property
    def max_partitions(self) -> int:
        """The most partitions any one topic has: the useful upper bound on workers."""
        return max(self.partition_counts().values(), default=0)


def compute_lag(
    committed: Mapping[TP, int | None], starts: Mapping[TP, int], ends: Mapping[TP, int]
) -> list[PartitionLag]:
    """Lag per partition from three offset maps keyed by (topic, partition); sorted by topic, partition."""
    out = []
    for tp in sorted(ends):
        c = committed.get(tp)
        out.append(
            PartitionLag(
                topic=tp[0],
                partition=tp[1],
                committed=None if c is None or c < 0 else c,
                start=max(0, starts.get(tp, 0)),
                end=ends[tp],
            )
        )
    return out


class _Consumer(Protocol):  # the part of confluent_kafka.Consumer used here
    def list_topics(self, *args: Any, **kwargs: Any) -> Any: ...
    def committed(self, *args: Any, **kwargs: Any) -> list[Any]: ...
    def get_watermark_offsets(self, *args: Any, **kwargs: Any) -> tuple[int, int]: ...
    def close(self) -> None: ...


def consumer_lag(
    bootstrap: str,
    group: str,
    topics: Sequence[str],
    *,
    client_config: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
    consumer: _Consumer | None = None,
) -> LagReport:
    """Read ``group``'s lag on ``topics`` from the cluster. Topics that do not exist are listed as missing.

    It reads with a ``Consumer`` that carries the group id but never subscribes, so it does not join
    the group or disturb its assignment. (``AdminClient.list_consumer_group_offsets`` crashes the
    process in confluent-kafka 2.16 on a cluster whose ``__consumer_offsets`` does not exist yet.)
    """
    from confluent_kafka import Consumer, TopicPartition

    own = consumer is None
    if consumer is None:
        conf = {
            **(client_config or {}),
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
        consumer = Consumer(conf)
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        tps: list[TP] = []
        missing: list[str] = []
        for topic in dict.fromkeys(topics):
            meta = metadata.topics.get(topic)
            if meta is None or getattr(meta, "error", None) is not None:
                missing.append(topic)
                continue
            tps.extend((topic, p) for p in sorted(meta.partitions))
        committed: dict[TP, int | None] = {}
        starts: dict[TP, int] = {}
        ends: dict[TP, int] = {}
        if tps:
            for tp in consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout_s):
                committed[(tp.topic, tp.partition)] = None if tp.offset < 0 else tp.offset
            for t, p in tps:
                starts[(t, p)], ends[(t, p)] = _watermarks(consumer, TopicPartition(t, p), timeout_s)
    except Exception as exc:  # confluent_kafka raises KafkaException with an error code
        raise AifleetError(f"could not read consumer lag of group {group!r}: {exc}") from exc
    finally:
        if own:
            consumer.close()
    return LagReport(group=group, partitions=compute_lag(committed, starts, ends), missing_topics=missing)


def _watermarks(consumer: _Consumer, tp: Any, timeout_s: float, attempts: int = 3) -> tuple[int, int]:
    """Low and high watermark; retried briefly (a partition whose leader just moved answers NOT_LEADER)."""
    for attempt in range(attempts):
        try:
            marks = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
            if marks is None:
                raise AifleetError(f"no watermarks for {tp.topic}[{tp.partition}]")
            return marks
        except AifleetError:
            raise
        except Exception as exc:
            retriable = getattr(exc.args[0], "retriable", lambda: False)() if exc.args else False
            if not retriable or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover
