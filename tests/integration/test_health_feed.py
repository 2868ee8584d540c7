"""The health feed through the real broker: every follower hears every worker's breaker transitions,
including those published shortly before it started (the look-back), and skips malformed records."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaProducer

from schemas.base import utc_now
from schemas.health import ProviderHealth
from streams.admin import ensure_topics
from streams.health_feed import apply_to_board, follow_health
from streams.resilience.circuit_breaker import BreakerBoard
from tests.fixtures.polling import eventually

pytestmark = [pytest.mark.kafka]
HEARD_WITHIN_S = 20.0


async def test_followers_hear_every_transition_including_recent_ones(kafka_bootstrap: str) -> None:
    topic = f"hf{uuid.uuid4().hex[:8]}.health"
    ensure_topics(kafka_bootstrap, [topic], partitions=4, replication_factor=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        earlier = ProviderHealth(provider="anthropic", state="open", worker="w1", ts=utc_now() - timedelta(seconds=2))
        await producer.send_and_wait(topic, earlier.to_json(), key=b"anthropic")

        heard: list[ProviderHealth] = []
        caught_up: list[int] = []  # how many events had been heard when the feed said it had caught up
        board = BreakerBoard(worker="w2")
        followers = [
            asyncio.create_task(
                follow_health(
                    heard.append,
                    bootstrap=kafka_bootstrap,
                    topic=topic,
                    lookback_s=60,
                    caught_up=lambda: caught_up.append(len(heard)),
                )
            ),
            asyncio.create_task(
                follow_health(apply_to_board(board), bootstrap=kafka_bootstrap, topic=topic, lookback_s=60)
            ),
        ]
        try:
            await eventually(
                lambda: [h.provider for h in heard] == ["anthropic"], HEARD_WITHIN_S
            )  # from before the start
            await eventually(lambda: caught_up == [1], HEARD_WITHIN_S)  # once, after the look-back's event
            await eventually(
                lambda: board.states().get("anthropic") == "open", HEARD_WITHIN_S
            )  # the other follower, independently
            await producer.send_and_wait(topic, b"not json", key=b"openai")
            later = ProviderHealth(provider="openai", state="open", worker="w1")
            await producer.send_and_wait(topic, later.to_json(), key=b"openai")  # another partition, likely
            await eventually(lambda: len(heard) == 2, HEARD_WITHIN_S)
            assert heard[1] == later
            await eventually(lambda: board.states().get("openai") == "open", HEARD_WITHIN_S)
            assert all(not f.done() for f in followers)  # the malformed record killed neither
        finally:
            for f in followers:
                f.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
    finally:
        await producer.stop()
