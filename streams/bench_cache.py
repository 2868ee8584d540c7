"""``aifleet bench cache``: a workload of distinct, concurrently duplicated and repeated requests.

Of ``requests`` requests, ``concurrent_ratio`` are twins sent at the same moment as a distinct
request (coalesced onto its provider call), ``repeat_ratio`` are exact repeats of a distinct
request sent once it was answered (cache hits), and the rest are distinct. Every request is
deterministic (temperature 0). With caching on, the provider sees exactly one call per distinct
request; the report compares that with the emulator's count and the latency of hits with misses.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from schemas.request import Message, Request
from schemas.response import Response
from streams.bench import Percentiles
from streams.client import AifleetClient, ClientDeliveryError, ClientTimeout


@dataclass(frozen=True, slots=True)
class CacheWorkload:
    """Which request is which: distinct originals, their concurrent twins, and later repeats."""

    originals: list[Request]
    twins: dict[int, Request]
    """Index of an original -> its twin (same content, its own request id)."""
    repeats: list[Request]


def build_workload(
    requests: int, *, repeat_ratio: float, concurrent_ratio: float, tenant: str, seed: int = 7
) -> CacheWorkload:
    """A workload of ``requests`` requests with the given shares of repeats and concurrent twins."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    run = uuid.uuid4().hex[:8]
    n_repeats = round(requests * repeat_ratio)
    n_twins = round(requests * concurrent_ratio)
    n_distinct = requests - n_repeats - n_twins
    if n_distinct <= 0 or n_twins > n_distinct:
        raise ValueError("the ratios leave too few distinct requests")

    def make(i: int, content: str, tag: str) -> Request:
        return Request(
            request_id=f"cache-{run}-{tag}-{i}",
            tenant=tenant,
            temperature=0,
            messages=[Message(role="user", content=content)],
        )

    contents = [f"cache bench {run}: question number {i}" for i in range(n_distinct)]
    originals = [make(i, c, "o") for i, c in enumerate(contents)]
    twins = {i: make(i, contents[i], "t") for i in rng.sample(range(n_distinct), n_twins)}
    repeats = [make(j, contents[rng.randrange(n_distinct)], "r") for j in range(n_repeats)]
    return CacheWorkload(originals=originals, twins=twins, repeats=repeats)


def workload_calls(stats: dict[str, Any] | None, workload: CacheWorkload) -> int | None:
    """Provider calls the emulator served for this workload's requests (not the stack's warm-up)."""
    if not stats:
        return None
    prefix = workload.originals[0].request_id.rsplit("-", 2)[0] + "-"
    return sum(n for rid, n in stats.get("calls_by_request", {}).items() if rid.startswith(prefix))


class CacheBenchResult(BaseModel):
    """What one cache bench run measured."""

    sent: int
    answered: int
    errors: int
    lost: int
    duplicates: int
    distinct: int
    provider_calls: int | None
    hits: int
    coalesced: int
    misses: int
    miss_latency_ms: Percentiles
    coalesced_latency_ms: Percentiles
    hit_latency_ms: Percentiles
    hit_to_miss_p99: float
    elapsed_s: float


async def run_cache_load(
    client: AifleetClient, workload: CacheWorkload, *, concurrency: int, timeout_s: float = 60.0
) -> tuple[dict[str, list[float]], list[Response], int]:
    """Send the workload: originals with their twins at once, then the repeats. Returns latencies by kind."""
    slots = asyncio.Semaphore(concurrency)
    latencies: dict[str, list[float]] = {"miss": [], "coalesced": [], "hit": []}
    responses: list[Response] = []
    lost = 0

    async def timed(req: Request) -> None:
        nonlocal lost
        t0 = time.perf_counter()
        try:
            resp = await client.request(req, timeout=timeout_s)
        except (ClientTimeout, ClientDeliveryError):  # never answered, or never produced
            lost += 1
            return
        ms = (time.perf_counter() - t0) * 1000
        responses.append(resp)
        if resp.status == "ok":
            latencies["miss"].append(ms)
        elif resp.status == "cached":
            coalesced = resp.route is not None and resp.route.reason.startswith("coalesced")
            latencies["coalesced" if coalesced else "hit"].append(ms)

    async def original(i: int, req: Request) -> None:
        async with slots:
            twin = workload.twins.get(i)
            await asyncio.gather(timed(req), *([timed(twin)] if twin else []))

    async def repeat(req: Request) -> None:
        async with slots:
            await timed(req)

    await asyncio.gather(*(original(i, r) for i, r in enumerate(workload.originals)))
    await asyncio.gather(*(repeat(r) for r in workload.repeats))
    return latencies, responses, lost


def summarise(
    workload: CacheWorkload,
    latencies: dict[str, list[float]],
    responses: list[Response],
    *,
    lost: int,
    duplicates: int,
    provider_calls: int | None,
    elapsed_s: float,
) -> CacheBenchResult:
    miss = Percentiles.of(latencies["miss"])
    hit = Percentiles.of(latencies["hit"])
    errors = sum(1 for r in responses if r.status == "error")
    return CacheBenchResult(
        sent=len(workload.originals) + len(workload.twins) + len(workload.repeats),
        answered=len(responses),
        errors=errors,
        lost=lost,
        duplicates=duplicates,
        distinct=len(workload.originals),
        provider_calls=provider_calls,
        hits=len(latencies["hit"]),
        coalesced=len(latencies["coalesced"]),
        misses=len(latencies["miss"]),
        miss_latency_ms=miss,
        coalesced_latency_ms=Percentiles.of(latencies["coalesced"]),
        hit_latency_ms=hit,
        hit_to_miss_p99=round(hit.p99 / miss.p99, 3) if miss.p99 else 0.0,
        elapsed_s=round(elapsed_s, 3),
    )
