"""An asyncio micro-batcher: many callers submit one item each; items are run together in batches.

A batch closes when ``max_batch`` items are waiting or ``max_wait_ms`` has passed since its first item,
whichever is first; then ``run_batch`` is awaited once for the whole batch and each caller's future gets its
own result (or the batch's exception). At most ``max_concurrent_batches`` batches run at once (default one),
so items that arrive while the slots are busy form the next batch: under load batches grow on their own, at
low load an item waits at most ``max_wait_ms``. On a CPU, several concurrent batches on single-threaded
onnxruntime runs use the cores better than one batch on a multi-threaded run (see docs/models.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatcherStats:
    """What a batcher has done so far."""

    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def mean_batch(self) -> float:
        """Average items per batch."""
        return self.items / self.batches if self.batches else 0.0


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item could run."""


class MicroBatcher(Generic[T, R]):
    """Collects submitted items into batches for ``run_batch(items) -> results`` (same length, same order)."""

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        max_concurrent_batches: int = 1,
        keep_sizes: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be >= 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_concurrent_batches = max_concurrent_batches
        self.stats = BatcherStats()
        self._run_batch = run_batch
        self._keep_sizes = keep_sizes
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result."""
        if self._closed:
            raise BatcherClosed("micro-batcher is closed")
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Submit several items concurrently; results in the same order."""
        return list(await asyncio.gather(*(self.submit(i) for i in items)))

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        try:
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
        except asyncio.CancelledError:
            # closed while the window was open: these items left the queue but never reached a run
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(BatcherClosed("micro-batcher was closed"))
            raise
        return batch

    async def _work(self) -> None:
        """Collect a batch whenever a run slot is free; batches beyond the slots wait in the queue and grow."""
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            live = [(item, fut) for item, fut in batch if not fut.done()]  # callers may have given up
            if not live:
                self._slots.release()
                continue
            self._record(len(live))
            task = loop.create_task(self._run(live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, live: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
        except asyncio.CancelledError:
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(BatcherClosed("micro-batcher was closed while the batch ran"))
            raise
        except Exception as exc:  # noqa: BLE001 - one failure answers every caller of the batch
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._slots.release()
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    def _record(self, size: int) -> None:
        s = self.stats
        s.batches += 1
        s.items += size
        s.largest_batch = max(s.largest_batch, size)
        if self._keep_sizes:
            s.sizes.append(size)

    async def close(self) -> None:
        """Stop the worker; callers still waiting get :class:`BatcherClosed`."""
        self._closed = True
        tasks = [t for t in (self._worker, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._worker = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(BatcherClosed("micro-batcher was closed"))

    async def __aenter__(self) -> MicroBatcher[T, R]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
