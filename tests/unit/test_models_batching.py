"""MicroBatcher: batches up to max_batch, flushes on max_wait, maps results back, propagates errors."""

from __future__ import annotations

import asyncio

import pytest

from models.batching import BatcherClosed, MicroBatcher


class Doubler:
    """A batch function that records the batches it was given; can be held closed with a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [i * 2 for i in items]


async def test_results_go_back_to_their_callers() -> None:
    fn = Doubler()
    async with MicroBatcher(fn, max_batch=4, max_wait_ms=50) as batcher:
        results = await batcher.submit_many(list(range(10)))
    assert results == [i * 2 for i in range(10)]
    assert all(len(b) <= 4 for b in fn.batches)
    assert sorted(i for b in fn.batches for i in b) == list(range(10))


async def test_full_batches_when_items_are_waiting() -> None:
    fn = Doubler()
    async with MicroBatcher(fn, max_batch=4, max_wait_ms=10_000) as batcher:
        # All 12 are queued before the worker first runs, so no batch has to wait for the window.
        results = await asyncio.wait_for(batcher.submit_many(list(range(12))), 5)
    assert results == [i * 2 for i in range(12)]
    assert [len(b) for b in fn.batches] == [4, 4, 4]
    assert batcher.stats.batches == 3 and batcher.stats.mean_batch == 4


async def test_partial_batch_is_flushed_after_max_wait() -> None:
    fn = Doubler()
    async with MicroBatcher(fn, max_batch=100, max_wait_ms=5) as batcher:
        assert await asyncio.wait_for(batcher.submit(21), 5) == 42
    assert fn.batches == [[21]]


async def test_items_arriving_during_a_batch_form_the_next_one() -> None:
    fn = Doubler()
    fn.gate = asyncio.Event()
    async with MicroBatcher(fn, max_batch=8, max_wait_ms=0) as batcher:
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.wait_for(fn.started.wait(), 5)  # the first batch is running, held at the gate
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
        await asyncio.sleep(0)  # let the three submissions reach the queue
        fn.gate.set()
        assert await asyncio.wait_for(first, 5) == 2
        assert await asyncio.wait_for(asyncio.gather(*rest), 5) == [4, 6, 8]
    assert fn.batches == [[1], [2, 3, 4]]


async def test_a_failing_batch_fails_its_callers_only() -> None:
    calls = {"n": 0}

    async def flaky(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("model exploded")
        return items

    async with MicroBatcher(flaky, max_batch=2, max_wait_ms=0) as batcher:
        first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in first)
        assert await batcher.submit(3) == 3  # the worker survived


async def test_wrong_result_count_is_an_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async with MicroBatcher(short, max_batch=2, max_wait_ms=0) as batcher:
        with pytest.raises(RuntimeError, match="results"):
            await asyncio.gather(batcher.submit(1), batcher.submit(2))


async def test_cancelled_caller_is_skipped() -> None:
    fn = Doubler()
    fn.gate = asyncio.Event()
    async with MicroBatcher(fn, max_batch=8, max_wait_ms=0) as batcher:
        blocker = asyncio.ensure_future(batcher.submit(0))
        await asyncio.wait_for(fn.started.wait(), 5)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        fn.gate.set()
        assert await asyncio.wait_for(kept, 5) == 4
        await blocker
    assert fn.batches == [[0], [2]]


async def test_close_fails_waiting_callers_and_refuses_new_ones() -> None:
    fn = Doubler()
    fn.gate = asyncio.Event()
    batcher = MicroBatcher(fn, max_batch=1, max_wait_ms=0)
    running = asyncio.ensure_future(batcher.submit(1))
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.wait_for(fn.started.wait(), 5)
    await batcher.close()
    for fut in (running, queued):
        with pytest.raises(BatcherClosed):
            await fut
    with pytest.raises(BatcherClosed):
        await batcher.submit(3)


async def test_close_during_an_open_batch_window_fails_the_items_already_collected() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=60_000)  # the window stays open until close
    collected = asyncio.ensure_future(batcher.submit(1))
    while batcher._worker is None or not batcher._queue.empty():  # queued, then taken by the worker
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # the worker now waits in its window for more items
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await asyncio.wait_for(collected, 5)
    assert fn.batches == []


async def test_concurrent_batches_run_side_by_side() -> None:
    running: list[list[int]] = []
    both_running = asyncio.Event()
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        running.append(items)
        if len(running) == 2:
            both_running.set()
        await release.wait()
        return items

    async with MicroBatcher(run, max_batch=2, max_wait_ms=0, max_concurrent_batches=2) as batcher:
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
        await asyncio.wait_for(both_running.wait(), 5)  # two batches in flight before either finished
        assert len(running) == 2
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*calls), 5) == list(range(6))
    assert sorted(i for b in running for i in b) == list(range(6)) and len(running) == 3


def test_rejects_bad_settings() -> None:
    fn = Doubler()
    with pytest.raises(ValueError):
        MicroBatcher(fn, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(fn, max_wait_ms=-1)
    with pytest.raises(ValueError):
        MicroBatcher(fn, max_concurrent_batches=0)
