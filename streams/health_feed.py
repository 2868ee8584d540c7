"""Provider health shared by every worker: breaker transitions out to the health topic, and back in.

Each worker publishes its circuit breakers' transitions and applies everyone else's, so a
provider that one worker saw fail is skipped by all of them. The feed reads without a consumer
group (every worker must see every event), starting a little before now so a fresh worker learns
of circuits that are open at the moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from schemas.health import ProviderHealth
from streams.observe import observe_health
from streams.publisher import Publisher
from streams.resilience.circuit_breaker import BreakerBoard

log = logging.getLogger(__name__)


class HealthPublisher:
    """The breaker board's transition callback: publishes each transition, keyed by provider."""

    def __init__(self, publisher: Publisher, topic: str) -> None:
        self._pub = publisher
        self._topic = topic
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, event: ProviderHealth) -> None:
        observe_health(event)
        task = asyncio.get_running_loop().create_task(self._send(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, event: ProviderHealth) -> None:
        try:
            await (await self._pub.publish(self._topic, event, key=event.provider))
        except Exception:
            log.warning("could not publish health transition for %s", event.provider, exc_info=True)


def apply_to_board(board: BreakerBoard) -> Callable[[ProviderHealth], None]:
    """A ``follow_health`` callback that applies each event to ``board`` (and counts the ones that changed it)."""

    def apply(event: ProviderHealth) -> None:
        if board.apply(event):
            observe_health(event)

    return apply


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, *, retry_s: float = 1.0) -> list[TopicPartition]:
    """Every partition of ``topic`` (the consumer subscribed to it without a group), waiting until it exists.

    A group-less consumer holds no metadata for a topic it is not subscribed to: ``partitions_for_topic``
    then returns None, and a feed that assigned from it would hear nothing, silently. A subscription
    without a group is assigned every partition once the topic's metadata arrives.
    """
    waited = False
    while True:
        assigned = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        if assigned:
            return assigned
        if not waited:
            log.warning("waiting for the partitions of %s", topic)
            waited = True
        await asyncio.sleep(retry_s)


async def follow_health(
    apply: Callable[[ProviderHealth], None],
    *,
    bootstrap: str,
    topic: str,
    lookback_s: float,
    kafka_options: Mapping[str, Any] | None = None,
    caught_up: Callable[[], None] | None = None,
) -> None:
    """Hand every health event on ``topic`` (from ``lookback_s`` ago on) to ``apply``, forever.

    No consumer group: every process that follows the feed sees every event, whichever worker published it.
    ``caught_up`` is called once, when the look-back has been replayed up to the ends the feed found at start.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        metadata_max_age_ms=5_000,
        **(kafka_options or {}),  # streams.kafka_auth.aiokafka_options: SASL/SSL
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        since_ms = int((time.time() - lookback_s) * 1000)
        # the ends first: with nothing since the look-back on a partition, start at the end as it was
        # *before* the look-up, so an event published meanwhile is still read (a lazy seek_to_end could
        # resolve past it)
        ends = await consumer.end_offsets(tps)
        offsets = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        position: dict[TopicPartition, int] = {}
        for tp in tps:
            found = offsets.get(tp)
            position[tp] = found.offset if found is not None else ends[tp]
            consumer.seek(tp, position[tp])
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                if records:
                    position[tp] = records[-1].offset + 1
                for record in records:
                    try:
                        event = ProviderHealth.from_json(record.value)
                    except (ValidationError, ValueError):
                        log.warning("ignoring a malformed health event at offset %s", record.offset)
                        continue
                    apply(event)
            if caught_up is not None and all(position[tp] >= ends[tp] for tp in tps):
                caught_up()
                caught_up = None  # once
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
