"""``aifleet bench``: drive N requests through the real pipeline and measure it.

Prints sent/ok/errors/lost/duplicates, throughput, end-to-end latency and the gateway's own
overhead (end-to-end minus the time spent inside provider calls) as p50/p95/p99.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel

from schemas.request import Message, Request
from schemas.response import Response
from streams.client import AifleetClient, ClientDeliveryError, ClientTimeout


class Percentiles(BaseModel):
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Percentiles:
        if not values:
            return cls(p50=0.0, p95=0.0, p99=0.0)
        xs = sorted(values)

        def q(p: float) -> float:
            return round(xs[min(len(xs) - 1, max(0, round(p * (len(xs) - 1))))], 3)

        return cls(p50=q(0.50), p95=q(0.95), p99=q(0.99))


class BenchResult(BaseModel):
    """What one bench run measured."""

    sent: int
    ok: int
    errors: int
    lost: int
    duplicates: int
    throughput_rps: float
    elapsed_s: float
    latency_ms: Percentiles
    overhead_ms: Percentiles
    concurrency: int
    workers: int | None = None
    provider_calls: int | None = None
    error_reasons: dict[str, int] = {}


async def run_load(
    client: AifleetClient,
    *,
    requests: int,
    concurrency: int,
    tenant: str = "bench",
    timeout_s: float = 60.0,
    make_request: Callable[[int], Request] | None = None,
    on_done: Callable[[], None] | None = None,
    settle_s: float = 2.0,
) -> tuple[BenchResult, list[Response]]:
    """Send ``requests`` requests with at most ``concurrency`` outstanding; collect every answer."""
    run_id = uuid.uuid4().hex[:8]

    def default_request(i: int) -> Request:
        return Request(
            request_id=f"bench-{run_id}-{i}",
            tenant=tenant,
            messages=[Message(role="user", content=f"bench question {run_id} number {i}")],
        )

    build = make_request or default_request
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    overheads: list[float] = []
    responses: list[Response] = []
    lost = 0

    async def one(i: int) -> None:
        nonlocal lost
        async with slots:
            req = build(i)
            t0 = time.perf_counter()
            try:
                resp = await client.request(req, timeout=timeout_s)
            except (ClientTimeout, ClientDeliveryError):  # never answered, or never produced
                lost += 1
            else:
                ms = (time.perf_counter() - t0) * 1000
                responses.append(resp)
                latencies.append(ms)
                provider_ms = resp.latency.provider_ms if resp.latency else 0.0
                overheads.append(max(0.0, ms - provider_ms))
            if on_done:
                on_done()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.perf_counter() - started
    await asyncio.sleep(settle_s)  # late duplicates would arrive now
    ok = sum(1 for r in responses if r.status in ("ok", "cached"))
    reasons: dict[str, int] = {}
    for r in responses:
        if r.error:
            reasons[r.error.reason.value] = reasons.get(r.error.reason.value, 0) + 1
    result = BenchResult(
        sent=requests,
        ok=ok,
        errors=len(responses) - ok,
        lost=lost,
        duplicates=client.duplicates,
        throughput_rps=round(len(responses) / elapsed, 1) if elapsed else 0.0,
        elapsed_s=round(elapsed, 3),
        latency_ms=Percentiles.of(latencies),
        overhead_ms=Percentiles.of(overheads),
        concurrency=concurrency,
        error_reasons=reasons,
    )
    return result, responses


def emulator_stats(url: str | None) -> dict[str, Any] | None:
    if not url:
        return None
    try:
        return httpx.get(f"{url}/_emulator/stats", timeout=5).json()
    except httpx.HTTPError:
        return None


def emulator_reset(url: str | None) -> None:
    if url:
        httpx.post(f"{url}/_emulator/reset", timeout=5)
