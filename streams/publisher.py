"""Producing from stages: one small interface, so stages are testable without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from schemas.base import Event


class Publisher(Protocol):
    """Sends an event; the awaitable it returns resolves once the broker has the record."""

    async def publish(
        self, topic: str, event: Event, *, key: str | None = None, partition: int | None = None
    ) -> Awaitable[object]: ...

    async def publish_raw(
        self, topic: str, value: bytes, *, key: str | None = None, partition: int | None = None
    ) -> Awaitable[object]: ...


Outbox = list[tuple[str, Event, str | None]]
"""Events to publish: (topic, event, key)."""


async def publish_all(publisher: Publisher, items: list[tuple[str, Event, str | None]]) -> None:
    """Publish several events and wait until the broker acknowledged every one of them."""
    futures = [await publisher.publish(topic, event, key=key) for topic, event, key in items]
    await asyncio.gather(*futures)
