"""``aifleet bench scale``: the same load at 1, 2 and 4 workers (or any counts), measured in one run.

One broker for the whole run; each worker count gets a fresh deployment (its own topic prefix with
enough partitions for the largest count), a warm-up, and the same ``requests`` at the same
``concurrency``. Rows carry throughput, latency and the CPU seconds every process spent per 1000
requests, which is what decides the result on a machine with fewer cores than processes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable

from pydantic import BaseModel

from infra.kafka import broker
from streams.bench import Percentiles, emulator_reset, emulator_stats, run_load
from streams.client import AifleetClient
from streams.settings import BENCH_CONFIG_FILE, Settings, patched_environ
from streams.soak import process_sample, stack_processes
from streams.stack import Stack


class ScaleRow(BaseModel):
    workers: int
    partitions: int
    sent: int
    ok: int
    lost: int
    duplicates: int
    provider_calls: int | None
    throughput_rps: float
    latency_ms: Percentiles
    cpu_s_per_1000: dict[str, float]
    """CPU seconds per 1000 requests, by process kind (workers summed)."""


def _cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the stack's processes, the broker, and this process (the load generator)."""
    out: dict[str, float] = {}
    procs = stack_processes(stack)
    broker_pid = broker.read_pid(broker.from_settings(stack.settings))
    if broker_pid is not None:
        procs["broker"] = broker_pid
    procs["client"] = os.getpid()
    for name, pid in procs.items():
        sample = process_sample(name, pid)
        if sample is not None:
            kind = "workers" if name.startswith("worker-") else name
            out[kind] = out.get(kind, 0.0) + sample.cpu_s
    return out


def run_scale(
    worker_counts: list[int],
    *,
    requests: int,
    concurrency: int,
    latency_ms: float = 0.0,
    analytics: bool = False,
    say: Callable[[str], None] = lambda _m: None,
) -> list[ScaleRow]:
    """Measure each worker count in turn on one broker; returns one row per count."""
    partitions = max(4, *worker_counts)
    base = Settings()
    cfg = broker.from_settings(base)
    started = base.bootstrap is None and broker.read_pid(cfg) is None
    rows: list[ScaleRow] = []
    try:  # the start inside: a Ctrl-C or a failed start still stops what it started
        if base.bootstrap is None:
            broker.start(cfg)
        for n in worker_counts:
            prefix = f"scale{n}-{uuid.uuid4().hex[:6]}"
            with patched_environ({"AIFLEET_KAFKA__TOPIC_PREFIX": prefix, "AIFLEET_KAFKA__PARTITIONS": str(partitions)}):
                settings = Settings()
                stack = Stack(
                    settings,
                    workers=n,
                    analytics=analytics,
                    emulator_latency_ms=latency_ms,
                    config_file=BENCH_CONFIG_FILE,
                    stop_broker=False,
                )
                say(f"{n} worker(s): starting")
                with stack.running():
                    stack.wait_group(n)  # every worker has its partitions before anything is measured
                    rows.append(_measure(stack, settings, n, partitions, requests, concurrency, say))
    finally:
        if started:
            broker.stop(cfg)
    return rows


def _measure(
    stack: Stack,
    settings: Settings,
    n: int,
    partitions: int,
    requests: int,
    concurrency: int,
    say: Callable[[str], None],
) -> ScaleRow:
    async def go() -> tuple[ScaleRow, dict[str, float], dict[str, float]]:
        async with AifleetClient.from_settings(settings, stack.bootstrap, partitions=partitions) as c:
            say(f"{n} worker(s): warm-up")
            await run_load(c, requests=min(500, requests), concurrency=concurrency, settle_s=0.5)
            emulator_reset(stack.emulator_url)
            before = _cpu(stack)
            say(f"{n} worker(s): {requests} requests")
            result, _ = await run_load(c, requests=requests, concurrency=concurrency, settle_s=1.0)
            after = _cpu(stack)
            stats = emulator_stats(stack.emulator_url)
            row = ScaleRow(
                workers=n,
                partitions=partitions,
                sent=result.sent,
                ok=result.ok,
                lost=result.lost,
                duplicates=result.duplicates,
                provider_calls=stats["total_calls"] if stats else None,
                throughput_rps=result.throughput_rps,
                latency_ms=result.latency_ms,
                cpu_s_per_1000={},
            )
            return row, before, after

    row, before, after = asyncio.run(go())
    per_1000 = {k: round((after[k] - before.get(k, 0.0)) / row.sent * 1000, 2) for k in after}
    return row.model_copy(update={"cpu_s_per_1000": per_1000})
