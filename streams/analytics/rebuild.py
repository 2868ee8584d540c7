"""Rebuild the analytics store from the usage topic: move the sink's consumer group back in time.

The analytics process's usage sink reads ``<prefix>.usage`` in its own consumer group
(``Settings.usage_sink_group``: ``<app_id>-usage-sink-<prefix>``). ``reset_offsets`` moves that
group's committed offsets on the usage topic back to the first event at or after a point in time
(``offsets_for_times``), or to the start of what the topic still retains, with the AdminClient's
``alter_consumer_group_offsets``. The next analytics process then re-reads every usage event from
there. Replaying events that are already stored is safe: the sink drops event ids it has stored
before inserting, and ``usage_events`` is a ``ReplacingMergeTree`` keyed by ``event_id``.

Offsets can only move while the group has no members, so the reset refuses
(``ConsumerGroupActive``) while an analytics process is running.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.analytics.errors import ConsumerGroupActive, RebuildError
from streams.settings import Settings


@dataclass(frozen=True)
class PartitionReset:
    """One partition: where the group was, where it is now, and the end of the log."""

    partition: int
    previous: int | None  # None: the group had committed nothing there
    offset: int
    end: int

    @property
    def to_replay(self) -> int:
        """Events the sink will read again (or for the first time) on this partition."""
        return max(self.end - self.offset, 0)


@dataclass(frozen=True)
class RebuildResult:
    """What ``reset_offsets`` did."""

    group: str
    topic: str
    since: datetime | None  # None: from the earliest retained offset
    partitions: tuple[PartitionReset, ...]
    seconds: float

    @property
    def to_replay(self) -> int:
        """Events on the usage topic from the new offsets to the end, all partitions together."""
        return sum(p.to_replay for p in self.partitions)


def _describe(admin: Any, group: str, timeout_s: float) -> Any:
    try:
        return admin.describe_consumer_groups([group], request_timeout=timeout_s)[group].result(timeout=timeout_s)
    except Exception as exc:
        raise RebuildError(f"cannot describe consumer group {group}: {exc}") from exc


def _refuse_if_active(description: Any, group: str) -> None:
    members = list(getattr(description, "members", None) or [])
    if members:
        hosts = sorted({str(getattr(m, "host", "?")) for m in members})
        raise ConsumerGroupActive(
            f"consumer group {group} has {len(members)} active member(s) ({', '.join(hosts)}): stop the analytics "
            "process (`aifleet sink`) first; a process that was killed leaves the group after its session timeout"
        )


def _targets(
    consumer: Any, topic: str, since: datetime | None, timeout_s: float
) -> tuple[list[int], dict[int, int], dict[int, int]]:
    """Partitions of ``topic``, the offset each should be reset to, and each log's end offset."""
    from confluent_kafka import TopicPartition

    metadata = consumer.list_topics(topic, timeout=timeout_s)
    meta = metadata.topics.get(topic)
    if meta is None or getattr(meta, "error", None) is not None or not meta.partitions:
        raise RebuildError(f"topic {topic} does not exist on the cluster")
    partitions = sorted(meta.partitions)
    bounds = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in partitions}
    ends = {p: int(high) for p, (_low, high) in bounds.items()}
    if since is None:
        return partitions, {p: int(low) for p, (low, _high) in bounds.items()}, ends
    at_ms = int(since.astimezone(UTC).timestamp() * 1000)
    found = consumer.offsets_for_times([TopicPartition(topic, p, at_ms) for p in partitions], timeout=timeout_s)
    targets: dict[int, int] = {}
    for tp in found:
        if tp.error is not None:
            raise RebuildError(f"cannot look up offsets of {topic}[{tp.partition}] at {since.isoformat()}: {tp.error}")
        # -1: nothing at or after that time on this partition, so there is nothing to replay there
        targets[tp.partition] = (
            ends[tp.partition] if tp.offset < 0 else max(int(tp.offset), int(bounds[tp.partition][0]))
        )
    return partitions, targets, ends


def reset_offsets(
    bootstrap: str,
    group: str,
    topic: str,
    *,
    since: datetime | None = None,
    client_config: Mapping[str, str] | None = None,
    timeout_s: float = 15.0,
) -> RebuildResult:
    """Move ``group``'s offsets on ``topic`` to the first event at or after ``since`` (None: the earliest).

    Raises ``ConsumerGroupActive`` while the group has members, ``RebuildError`` when the topic is
    missing or the cluster refuses the change.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    started = time.perf_counter()
    conf: dict[str, str | int | float | bool] = {**(client_config or {}), "bootstrap.servers": bootstrap}
    admin = AdminClient(conf)
    _refuse_if_active(_describe(admin, group, timeout_s), group)
    consumer = _probe_consumer(conf, group)
    try:
        partitions, targets, ends = _targets(consumer, topic, since, timeout_s)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
        previous = {tp.partition: (None if tp.offset < 0 else int(tp.offset)) for tp in committed}
    except RebuildError:
        raise
    except Exception as exc:
        raise RebuildError(f"cannot read the offsets of {topic}: {exc}") from exc
    finally:
        consumer.close()
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, targets[p]) for p in partitions])
    try:
        outcome = admin.alter_consumer_group_offsets([request], request_timeout=timeout_s)[group].result(
            timeout=timeout_s
        )
    except Exception as exc:
        text = str(exc)
        if "NON_EMPTY_GROUP" in text or "UNKNOWN_MEMBER_ID" in text or "REBALANCE_IN_PROGRESS" in text:
            raise ConsumerGroupActive(f"consumer group {group} became active while resetting: {text}") from exc
        raise RebuildError(f"cannot reset the offsets of {group} on {topic}: {text}") from exc
    failed = [tp for tp in outcome.topic_partitions if getattr(tp, "error", None) is not None]
    if failed:
        raise RebuildError(
            f"cannot reset {group} on {topic}: " + "; ".join(f"[{tp.partition}] {tp.error}" for tp in failed)
        )
    resets = tuple(PartitionReset(p, previous.get(p), targets[p], ends[p]) for p in partitions)
    return RebuildResult(group, topic, since, resets, round(time.perf_counter() - started, 3))


def _probe_consumer(conf: Mapping[str, str | int | float | bool], group: str) -> Any:
    """A consumer that carries the group id but never subscribes: it reads offsets without joining."""
    from confluent_kafka import Consumer

    return Consumer({**conf, "group.id": group, "enable.auto.commit": False, "enable.partition.eof": False})


def rebuild(settings: Settings, *, since: datetime | None = None, timeout_s: float = 15.0) -> RebuildResult:
    """``reset_offsets`` for this deployment's usage sink group on its usage topic."""
    from streams.kafka_auth import librdkafka_config
    from streams.topics import Topics

    return reset_offsets(
        settings.kafka_servers,
        settings.usage_sink_group,
        Topics.from_settings(settings).usage,
        since=since,
        client_config=librdkafka_config(settings),
        timeout_s=timeout_s,
    )


def adopt_offsets(
    bootstrap: str,
    *,
    source_group: str,
    group: str,
    topic: str,
    client_config: Mapping[str, str] | None = None,
    timeout_s: float = 15.0,
) -> dict[int, int]:
    """Give ``group`` the offsets ``source_group`` committed on ``topic``, when ``group`` has none yet.

    For the upgrade to the batch usage sink: it used to read the usage topic in the analytics app's own
    group. Its successor group starts where that one left off instead of re-reading the whole topic.
    Returns the adopted offsets per partition ({} when ``group`` already has offsets or there is nothing
    to adopt). Raises ``RebuildError`` when the cluster refuses.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    conf: dict[str, str | int | float | bool] = {**(client_config or {}), "bootstrap.servers": bootstrap}
    mine, theirs = _probe_consumer(conf, group), _probe_consumer(conf, source_group)
    try:
        meta = mine.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or getattr(meta, "error", None) is not None or not meta.partitions:
            return {}
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        if any(tp.offset >= 0 for tp in mine.committed(tps, timeout=timeout_s)):
            return {}
        adopted = {tp.partition: int(tp.offset) for tp in theirs.committed(tps, timeout=timeout_s) if tp.offset >= 0}
    except Exception as exc:
        raise RebuildError(f"cannot read the committed offsets on {topic}: {exc}") from exc
    finally:
        mine.close()
        theirs.close()
    if not adopted:
        return {}
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in adopted.items()])
    admin = AdminClient(conf)  # held until the result is in: a dropped client never completes its futures
    try:
        admin.alter_consumer_group_offsets([request], request_timeout=timeout_s)[group].result(timeout=timeout_s)
    except Exception as exc:
        raise RebuildError(f"cannot give {group} the offsets of {source_group} on {topic}: {exc}") from exc
    return adopted
