"""``aifleet soak``: a steady request rate for a long while, watching memory and latency over time.

Requests are sent open-loop at ``rate_per_s`` (a new one every 1/rate seconds, whatever the answers
do), so a slowdown shows up as latency, not as a lower offered load. Every bucket (a minute by
default) records what was sent and answered, latency percentiles of the answers, and the resident
memory (VmRSS) and CPU time of every process of the stack. The verdict compares the first buckets
after warm-up with the last ones: memory should stay flat and latency should not creep.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from schemas.request import Message, Request
from streams.bench import Percentiles
from streams.client import AifleetClient, ClientDeliveryError, ClientTimeout
from streams.stack import Stack


class ProcessSample(BaseModel):
    name: str
    rss_mb: float
    cpu_s: float


class Bucket(BaseModel):
    """One interval of the soak."""

    index: int
    start_s: float
    sent: int
    answered: int
    lost: int
    errors: int
    latency_ms: Percentiles
    processes: list[ProcessSample]

    def rss(self, name: str) -> float:
        return next((p.rss_mb for p in self.processes if p.name == name), 0.0)


class SoakResult(BaseModel):
    minutes: float
    rate_per_s: float
    bucket_s: float
    sent: int
    answered: int
    lost: int
    errors: int
    buckets: list[Bucket]
    rss_growth_mb: dict[str, float]
    """Per process: mean RSS of the last quarter of buckets minus that of the first quarter after warm-up."""
    p99_creep: float
    """p99 latency of the last quarter of buckets over that of the first quarter after warm-up."""


def process_sample(name: str, pid: int) -> ProcessSample | None:
    """VmRSS and user+system CPU seconds of a live process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ProcessSample(name=name, rss_mb=round(rss_kb / 1024, 1), cpu_s=round(ticks / 100, 2))


def stack_processes(stack: Stack) -> dict[str, int]:
    """The stack's children by name, plus the broker when this stack started it."""
    procs = {c.name: c.proc.pid for c in stack.children if c.proc.poll() is None}
    broker_pid = stack.broker_pid()
    if broker_pid is not None:
        procs["broker"] = broker_pid
    return procs


async def run_soak(
    client: AifleetClient,
    stack: Stack,
    *,
    minutes: float,
    rate_per_s: float,
    bucket_s: float = 60.0,
    timeout_s: float = 30.0,
    warmup_buckets: int = 1,
    on_bucket: object = None,
) -> SoakResult:
    """Send ``rate_per_s`` requests per second for ``minutes``; one ``Bucket`` per ``bucket_s``."""
    run = uuid.uuid4().hex[:8]
    total_s = minutes * 60
    n_buckets = max(1, round(total_s / bucket_s))
    lat: list[list[float]] = [[] for _ in range(n_buckets)]
    sent = [0] * n_buckets
    lost = [0] * n_buckets
    errors = [0] * n_buckets
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()

    async def one(i: int, bucket: int) -> None:
        req = Request(
            request_id=f"soak-{run}-{i}",
            tenant="bench",
            messages=[Message(role="user", content=f"soak {run} question {i}")],
        )
        t0 = time.perf_counter()
        try:
            resp = await client.request(req, timeout=timeout_s)
        except (ClientTimeout, ClientDeliveryError):  # never answered, or never produced
            lost[bucket] += 1
            return
        lat[bucket].append((time.perf_counter() - t0) * 1000)
        if resp.status == "error":
            errors[bucket] += 1

    buckets: list[Bucket] = []
    i = 0
    for b in range(n_buckets):
        bucket_start = started + b * bucket_s
        while (now := time.monotonic()) < bucket_start + bucket_s:
            due = started + i / rate_per_s
            if due > now:
                await asyncio.sleep(min(due - now, bucket_start + bucket_s - now))
                continue
            task = asyncio.create_task(one(i, b))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent[b] += 1
            i += 1
        samples = [s for name, pid in stack_processes(stack).items() if (s := process_sample(name, pid)) is not None]
        if b > 0:  # the previous bucket's requests have had a whole bucket to finish
            buckets[-1] = _closed(buckets[-1], lat, lost, errors)
        buckets.append(
            Bucket(
                index=b,
                start_s=round(bucket_start - started, 1),
                sent=sent[b],
                answered=0,
                lost=0,
                errors=0,
                latency_ms=Percentiles.of([]),
                processes=samples,
            )
        )
        if callable(on_bucket) and b > 0:
            on_bucket(buckets[-2])
    if tasks:
        await asyncio.gather(*tasks)
    buckets[-1] = _closed(buckets[-1], lat, lost, errors)
    if callable(on_bucket):
        on_bucket(buckets[-1])
    return _verdict(buckets, minutes=minutes, rate_per_s=rate_per_s, bucket_s=bucket_s, warmup=warmup_buckets)


def _closed(bucket: Bucket, lat: list[list[float]], lost: list[int], errors: list[int]) -> Bucket:
    b = bucket.index
    return bucket.model_copy(
        update={
            "answered": len(lat[b]),
            "lost": lost[b],
            "errors": errors[b],
            "latency_ms": Percentiles.of(lat[b]),
        }
    )


def _verdict(buckets: list[Bucket], *, minutes: float, rate_per_s: float, bucket_s: float, warmup: int) -> SoakResult:
    steady = buckets[warmup:] or buckets
    q = max(1, len(steady) // 4)
    first, last = steady[:q], steady[-q:]
    names = {p.name for b in buckets for p in b.processes}

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    growth = {n: round(mean([b.rss(n) for b in last]) - mean([b.rss(n) for b in first]), 1) for n in sorted(names)}
    p99_first = mean([b.latency_ms.p99 for b in first])
    p99_last = mean([b.latency_ms.p99 for b in last])
    return SoakResult(
        minutes=minutes,
        rate_per_s=rate_per_s,
        bucket_s=bucket_s,
        sent=sum(b.sent for b in buckets),
        answered=sum(b.answered for b in buckets),
        lost=sum(b.lost for b in buckets),
        errors=sum(b.errors for b in buckets),
        buckets=buckets,
        rss_growth_mb=growth,
        p99_creep=round(p99_last / p99_first, 3) if p99_first else 0.0,
    )
