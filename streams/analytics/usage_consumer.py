"""The usage sink's consumer: batches from the usage topic into ClickHouse, at least once.

It is a plain aiokafka group consumer, not a Faust agent. The sink needs no per-event routing,
tables or acks: it takes whole fetches, decodes them, writes one batch, and commits the batch's
offsets once the write is durable. Through a Faust agent the same work ran at about 6,500 events/s
on the development machine, bound by Faust's per-event machinery; fetched in bulk it is several
times that (``aifleet analytics bench-sink`` measures both paths in one run).

Delivery:

* offsets are committed only after the batch is stored; a crash before that re-reads the batch,
  and the store drops event ids it already holds, so a replay never double-counts;
* while ClickHouse is away the same batch is retried, the partitions are paused and the consumer
  keeps polling (so it stays in its group), and nothing is committed;
* records that are not ``UsageEvent``s go to the dead-letter topic with their reason before the
  batch is committed (``UsageEvent`` bounds its numbers by the column types, so a value the table
  cannot hold is caught here);
* a batch the store refuses because of a value in it (``AnalyticsDataError``) is split in halves
  until the refused events stand alone; the others are stored, the refused ones dead-lettered
  (``processing_failed``, with the store's message), all before the commit;
* any other refusal (``AnalyticsQueryError``: a schema problem, run ``analytics migrate``) is
  logged as an error and the same batch retried like an unreachable store: the consumer neither
  stops (it did, and a restart re-read the same batch) nor commits what it has not stored;
* a commit refused because a rebalance moved the partitions is logged: the new owner re-reads
  from the last commit, and the duplicates are dropped by the store.

Its consumer group is ``Settings.usage_sink_group`` (``analytics rebuild`` moves that group's
offsets). The Faust analytics app keeps its own group for leader election. On an upgrade from the
Faust-agent sink, which read in that app's group, the new group first adopts the old group's offsets
(``rebuild.adopt_offsets``), so the topic is not re-read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.usage import UsageEvent
from streams.analytics.errors import AnalyticsDataError, AnalyticsError
from streams.codec import dead_letter, decode_event
from streams.errors import InvalidRecord

log = logging.getLogger(__name__)


class RefusedByStore(InvalidRecord):
    """A usage event that decoded but that the analytics store cannot hold."""

    dlq_reason = DeadLetterReason.PROCESSING_FAILED


FETCH_BYTES = 16 * 1024 * 1024


class _Sink(Protocol):
    async def write(self, events: list[UsageEvent]) -> None: ...


@dataclass
class UsageConsumerStats:
    """What the consumer did, for logs and benchmarks."""

    batches: int = 0
    events: int = 0
    dead_letters: int = 0
    retries: int = 0
    commits_refused: int = 0
    seconds_writing: float = 0.0


class UsageConsumer:
    """Reads ``topic`` in ``group`` and hands decoded batches to ``sink``; see the module doc."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        sink: _Sink,
        publish_dead_letters: Callable[[list[DeadLetter]], Awaitable[None]],
        on_events: Callable[[list[UsageEvent]], None] = lambda _events: None,
        batch_size: int = 2000,
        within_s: float = 1.0,
        retry_backoff_s: float = 1.0,
        max_payload: int = 64 * 1024,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.sink = sink
        self.publish_dead_letters = publish_dead_letters
        self.on_events = on_events
        self.batch_size = batch_size
        self.within_s = within_s
        self.retry_backoff_s = retry_backoff_s
        self.max_payload = max_payload
        self.stats = UsageConsumerStats()
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES,
            fetch_max_bytes=4 * FETCH_BYTES,
            **(kafka_options or {}),
        )

    async def run(self) -> None:
        """Consume until cancelled."""
        await self._consumer.start()
        try:
            while True:
                records = await self._collect()
                if records:
                    await self._handle(records)
        finally:
            await self._consumer.stop()

    async def _collect(self) -> list[ConsumerRecord[bytes, bytes]]:
        """Up to ``batch_size`` records, waiting at most ``within_s`` once the first has arrived."""
        out: list[ConsumerRecord[bytes, bytes]] = []
        deadline: float | None = None
        while len(out) < self.batch_size:
            wait_ms = 500 if deadline is None else max(int((deadline - time.monotonic()) * 1000), 0)
            fetched = await self._consumer.getmany(timeout_ms=wait_ms, max_records=self.batch_size - len(out))
            for records in fetched.values():
                out.extend(records)
            if out and deadline is None:
                deadline = time.monotonic() + self.within_s
            if deadline is None or time.monotonic() >= deadline:
                break
        return out

    async def _handle(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        events: list[UsageEvent] = []
        sources: dict[int, ConsumerRecord[bytes, bytes]] = {}  # id(event) -> its record
        letters: list[DeadLetter] = []
        ends: dict[TopicPartition, int] = {}
        for r in records:
            ends[TopicPartition(r.topic, r.partition)] = r.offset + 1
            try:
                event = decode_event(r.value, UsageEvent)
                events.append(event)
                sources[id(event)] = r
            except InvalidRecord as exc:
                letters.append(self._letter(r, exc))
        if letters:  # before the commit, so a bad record is never just dropped
            log.warning("dead-lettering %d usage records that are not UsageEvents", len(letters))
            await self.publish_dead_letters(letters)
            self.stats.dead_letters += len(letters)
        self.on_events(events)
        refused = await self._write(events)
        if refused:  # before the commit, as above
            log.warning("dead-lettering %d usage events the store refused", len(refused))
            why = "the analytics store refused the event"
            await self.publish_dead_letters(
                [self._letter(sources[id(e)], RefusedByStore(f"{why}: {exc.message}")) for e, exc in refused]
            )
            self.stats.dead_letters += len(refused)
        try:
            await self._consumer.commit(ends)
        except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partitions: they are re-read
            self.stats.commits_refused += 1
            log.warning("usage offsets not committed (%s); the batch is re-read and its duplicates dropped", exc)
        self.stats.batches += 1
        self.stats.events += len(events)

    def _letter(self, record: ConsumerRecord[bytes, bytes], exc: InvalidRecord) -> DeadLetter:
        """The dead letter of one usage record, with its position."""
        return dead_letter(
            exc,
            record.value,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            max_payload=self.max_payload,
        )

    async def _write(self, events: list[UsageEvent]) -> list[tuple[UsageEvent, AnalyticsDataError]]:
        """Store ``events``; return those the store refused for their values (each alone), with why.

        A batch refused for a value is halved until the refused events stand alone (the sink drops
        what an earlier half already stored, so re-sending is safe).
        """
        try:
            await self._write_retrying(events)
        except AnalyticsDataError as exc:
            if len(events) == 1:
                return [(events[0], exc)]
            half = len(events) // 2
            return await self._write(events[:half]) + await self._write(events[half:])
        return []

    async def _write_retrying(self, events: list[UsageEvent]) -> None:
        """Write until it succeeds; meanwhile the partitions are paused and polled, so the group keeps us.

        Raises only ``AnalyticsDataError`` (a value of these events does not fit the table).
        """
        if not events:
            return
        paused: set[TopicPartition] = set()
        started = time.perf_counter()
        try:
            while True:
                try:
                    await self.sink.write(events)
                    return
                except AnalyticsDataError:
                    raise
                except AnalyticsError as exc:
                    self.stats.retries += 1
                    if exc.retryable:
                        log.warning("usage insert failed (%s); retrying the same %d events", exc.message, len(events))
                    else:  # not the rows: the schema (run `analytics migrate`); retry, never commit unstored
                        log.error("usage insert refused (%s); retrying the same %d events", exc.message, len(events))
                    paused = set(self._consumer.assignment())  # again each time: a rebalance may add some
                    self._consumer.pause(*paused)
                    pause_s = exc.retry_after_s or self.retry_backoff_s
                    # poll while paused, so the group keeps this member; whatever still arrives is not ours
                    # to handle yet: rewind to it, so it is read (and committed) after this batch
                    fetched = await self._consumer.getmany(timeout_ms=int(pause_s * 1000))
                    for tp, records in fetched.items():
                        if records:
                            self._consumer.seek(tp, records[0].offset)
        finally:
            self.stats.seconds_writing += time.perf_counter() - started
            if paused:
                self._consumer.resume(*(tp for tp in paused if tp in self._consumer.assignment()))


__all__ = ["UsageConsumer", "UsageConsumerStats"]
