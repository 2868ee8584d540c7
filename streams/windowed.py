"""At-least-once processing with many records in flight, without losing any on a crash.

Faust's agent ``concurrency`` > 1 can commit an offset past a record still being processed
(faust-streaming issue 606), which a crash then loses. Here one agent reads its stream with
automatic acks off, runs each record in a task (at most ``max_in_flight`` at once), and acks the
record only after its handler finished and everything it produced was acknowledged by the broker.
Faust commits the highest *contiguous* acked offset per partition, so a record still in flight
holds the committed offset back and a successor worker resumes from it. For the stream's topics
``streams.faust_acks`` makes that hold around rebalances too (faust alone could commit past a record
no handler saw).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from streams import faust_acks

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[None]]


async def process_windowed(
    stream: Any,
    handler: Handler,
    *,
    max_in_flight: int,
    on_crash: Callable[[Any, BaseException], Awaitable[None]] | None = None,
) -> None:
    """Run ``handler(event)`` for every event of a faust stream, acking each one when it is done."""
    faust_acks.apply()
    faust_acks.register(getattr(getattr(stream, "channel", None), "topics", ()))
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def run(event: Any) -> None:
        try:
            await handler(event)
        except asyncio.CancelledError:
            raise  # not acked: the record is processed again after a restart
        except Exception as exc:
            log.exception("handler failed; dead-lettering the record")
            if on_crash is None:
                raise
            try:
                await on_crash(event, exc)
            except Exception:
                log.exception("could not dead-letter a failed record; it stays unacked")
                return
        event.ack()

    try:
        async for event in stream.noack().events():
            await slots.acquire()
            task = asyncio.create_task(run(event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _t: slots.release())
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
