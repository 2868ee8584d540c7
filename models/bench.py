"""Inference benchmark: sentences/s and latency percentiles per variant and batch size, plus micro-batching.

:func:`run_infer_bench` is what ``aifleet models bench`` and ``aifleet bench infer`` call. Variants are
measured interleaved (round-robin in short slices) so a noisy neighbour on a shared machine slows them alike.
Latency is one ``Embedder.embed`` call end to end: tokenisation, padding, inference, reordering. Each row
also has ``cpu_ms_per_call`` (process CPU time), which a busy neighbour distorts less than wall time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.batching import MicroBatcher
from models.build import Variant, build_variants
from models.corpus import SAMPLE_SENTENCES
from models.embedder import Embedder, new_session_pool
from models.session import Device
from models.weights import MINILM, ModelSpec

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


def _stats(latencies_s: Sequence[float], sentences: int, busy_s: float) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "calls": len(latencies_s),
        "sentences_per_s": round(sentences / busy_s, 2) if busy_s > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def _batch_of(texts: Sequence[str], size: int, start: int) -> list[str]:
    return [texts[(start + i) % len(texts)] for i in range(size)]


async def _microbatched(
    embedder: Embedder,
    texts: Sequence[str],
    seconds: float,
    concurrency: int,
    max_batch: int,
    max_wait_ms: float,
    in_flight: int = 1,
) -> dict[str, Any]:
    """``concurrency`` callers each submitting one sentence at a time through a MicroBatcher."""

    async def run(items: list[str]) -> list[np.ndarray]:
        return list(await embedder.embed_async(items))

    batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
        run, max_batch=max_batch, max_wait_ms=max_wait_ms, max_concurrent_batches=in_flight
    )
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await batcher.submit(texts[i % len(texts)])
            latencies.append(time.perf_counter() - t0)
            i += concurrency

    start = time.perf_counter()
    async with batcher:
        await asyncio.gather(*(caller(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - start
    out = _stats(latencies, len(latencies), elapsed)
    out.update(
        concurrency=concurrency,
        batches_in_flight=in_flight,
        intra_op_threads=embedder.intra_op_threads,
        workers=embedder.workers,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        batches=batcher.stats.batches,
        mean_batch=round(batcher.stats.mean_batch, 2),
    )
    return out


def run_infer_bench(
    variants: Sequence[Variant] = ("fp32", "int8"),
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    device: Device = "cpu",
    seconds: float = 1.0,
    rounds: int = 3,
    min_calls: int = 3,
    intra_op_threads: int | None = None,
    microbatch: bool = True,
    concurrency: int = 64,
    microbatch_max_batch: int = 32,
    microbatch_max_wait_ms: float = 2.0,
    microbatch_workers: int | None = None,
    texts: Sequence[str] = SAMPLE_SENTENCES,
    spec: ModelSpec = MINILM,
    home: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure each variant at each batch size for about ``seconds`` (split into ``rounds`` interleaved slices).

    Returns a JSON-friendly dict: per-variant rows (sentences/s, p50/p95/mean latency in ms), the int8/fp32
    throughput ratio per batch size when both were measured, and, with ``microbatch``, the throughput of
    ``concurrency`` single-sentence callers through a :class:`MicroBatcher` against back-to-back batch-1 calls:
    once with the table's embedder and one batch in flight, and (on CPU, ``microbatch_workers`` > 1, default
    the core count) with single-threaded runs and that many batches in flight.
    Must be called outside a running event loop.
    """
    import onnxruntime as ort

    say = progress or (lambda _msg: None)
    build_variants(list(variants), spec, home, progress=say)
    pool = new_session_pool(1 << 40)  # the bench holds every variant at once
    embedders = {
        v: Embedder(v, device, spec=spec, home=home, intra_op_threads=intra_op_threads, pool=pool, max_batch_size=512)
        for v in variants
    }
    tokens = [len(ids) for ids in embedders[variants[0]].tokenizer.encode(texts)]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for size in batch_sizes:
        say(f"batch {size}")
        lat: dict[str, list[float]] = {v: [] for v in variants}
        busy: dict[str, float] = dict.fromkeys(variants, 0.0)
        cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
        calls = 0
        for v in variants:  # warm this shape up once
            embedders[v].embed(_batch_of(texts, size, 0))
        for _ in range(rounds):
            for v in variants:
                slice_end = time.perf_counter() + seconds / rounds
                while time.perf_counter() < slice_end or len(lat[v]) < min_calls:
                    batch = _batch_of(texts, size, calls)
                    calls += 1
                    c0, t0 = time.process_time(), time.perf_counter()
                    embedders[v].embed(batch)
                    dt = time.perf_counter() - t0
                    lat[v].append(dt)
                    busy[v] += dt
                    cpu[v] += time.process_time() - c0
        for v in variants:
            row: dict[str, Any] = {"batch_size": size}
            row.update(_stats(lat[v], len(lat[v]) * size, busy[v]))
            # CPU time this process spent per call: less sensitive than wall time to other load on the machine
            # (it includes onnxruntime's worker threads, spinning included).
            row["cpu_ms_per_call"] = round(cpu[v] / len(lat[v]) * 1000.0, 3)
            results[v].append(row)

    report: dict[str, Any] = {
        "model": spec.name,
        "device": device,
        "onnxruntime": ort.__version__,
        "cpu_count": os.cpu_count(),
        "intra_op_threads": intra_op_threads,
        "seconds_per_point": seconds,
        "mean_tokens_per_text": round(statistics.fmean(tokens), 1),
        "providers": {v: e.report.as_dict() for v, e in embedders.items()},
        "results": results,
    }
    if "fp32" in results and "int8" in results:
        report["int8_vs_fp32"] = {
            str(a["batch_size"]): round(b["sentences_per_s"] / a["sentences_per_s"], 3)
            for a, b in zip(results["fp32"], results["int8"], strict=True)
        }
    if microbatch:
        workers = microbatch_workers or (os.cpu_count() or 1 if device == "cpu" else 1)
        report["microbatch"] = {}
        for v, emb in embedders.items():
            say(f"micro-batching {v}")
            batch1 = _batch1_throughput(emb, texts, seconds)
            runs = [_run_mb(emb, texts, seconds, concurrency, microbatch_max_batch, microbatch_max_wait_ms, 1)]
            if workers > 1:
                # One single-threaded run per core, several batches in flight: small batches use the cores
                # better this way than one batch on a multi-threaded run.
                parallel = Embedder(
                    v, device, spec=spec, home=home, intra_op_threads=1, workers=workers, pool=pool, max_batch_size=512
                )
                runs.append(
                    _run_mb(
                        parallel, texts, seconds, concurrency, microbatch_max_batch, microbatch_max_wait_ms, workers
                    )
                )
                parallel.close()
            best = max(r["sentences_per_s"] for r in runs)
            report["microbatch"][v] = {
                "batch1_sentences_per_s": batch1,
                "runs": runs,
                "best_sentences_per_s": best,
                "ratio_vs_batch1": round(best / batch1, 3) if batch1 else None,
            }
    if device == "cpu" and (os.cpu_count() or 1) > 1 and 1 in batch_sizes:
        say("batch 1 on every core")
        report["batch1_all_cores"] = _batch1_all_cores(variants, seconds, rounds, texts, spec, home, pool)
    if 1 in batch_sizes:
        report["batch1_best"] = batch1_best(report)
    for e in embedders.values():
        e.close()
    return report


def batch1_best(report: dict[str, Any]) -> dict[str, Any]:
    """Each variant's best batch-1 throughput on this machine, over the configurations the report measured
    (one session at the table's threads; one single-threaded run per core), and int8 over fp32 on those bests."""
    threads = report.get("intra_op_threads") or "default"
    best: dict[str, dict[str, Any]] = {}
    for v, rows in report["results"].items():
        options = [(r["sentences_per_s"], f"one session, threads={threads}") for r in rows if r["batch_size"] == 1]
        every_core = report.get("batch1_all_cores", {}).get("sentences_per_s", {})
        if v in every_core:
            options.append((every_core[v], f"one single-threaded run per core ({report['cpu_count']})"))
        if options:
            rate, config = max(options)
            best[v] = {"sentences_per_s": rate, "config": config}
    out: dict[str, Any] = {"variants": best}
    if "fp32" in best and "int8" in best and best["fp32"]["sentences_per_s"]:
        out["int8_vs_fp32"] = round(best["int8"]["sentences_per_s"] / best["fp32"]["sentences_per_s"], 3)
    return out


def _batch1_all_cores(
    variants: Sequence[Variant],
    seconds: float,
    rounds: int,
    texts: Sequence[str],
    spec: ModelSpec,
    home: Path | None,
    pool: Any,
) -> dict[str, Any]:
    """Batch-1 throughput of each variant using the whole CPU, each in its best CPU configuration.

    One single-threaded run per core, with as many callers each sending one sentence at a time and no
    micro-batching: what a variant gives single-sentence traffic on this machine. (At batch 1 a second
    intra-op thread helps fp32's float GEMMs but hardly int8's small integer ones, so comparing both at
    onnxruntime's default threads measures thread scaling more than the variants.) Interleaved in rounds.
    """
    cores = os.cpu_count() or 1
    embedders = {
        v: Embedder(v, "cpu", spec=spec, home=home, intra_op_threads=1, workers=cores, pool=pool, max_batch_size=512)
        for v in variants
    }
    done: dict[str, int] = dict.fromkeys(variants, 0)
    spent: dict[str, float] = dict.fromkeys(variants, 0.0)

    async def slice_of(v: Variant, length_s: float) -> None:
        emb = embedders[v]
        end = time.perf_counter() + length_s

        async def caller(offset: int) -> int:
            n = 0
            while time.perf_counter() < end:
                await emb.embed_async([texts[(offset + n) % len(texts)]])
                n += 1
            return n

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(caller(i * 7) for i in range(cores)))
        spent[v] += time.perf_counter() - t0
        done[v] += sum(counts)

    for v in variants:  # warm up the sessions and threads
        asyncio.run(slice_of(v, 0.2))
        done[v], spent[v] = 0, 0.0
    for _ in range(rounds):
        for v in variants:
            asyncio.run(slice_of(v, seconds / rounds))
    for e in embedders.values():
        e.close()
    out: dict[str, Any] = {
        "cores": cores,
        "sentences_per_s": {v: round(done[v] / spent[v], 2) for v in variants},
    }
    if "fp32" in done and "int8" in done and done["fp32"]:
        out["int8_vs_fp32"] = round((done["int8"] / spent["int8"]) / (done["fp32"] / spent["fp32"]), 3)
    return out


def _run_mb(
    embedder: Embedder,
    texts: Sequence[str],
    seconds: float,
    concurrency: int,
    max_batch: int,
    max_wait_ms: float,
    in_flight: int,
) -> dict[str, Any]:
    return asyncio.run(_microbatched(embedder, texts, seconds, concurrency, max_batch, max_wait_ms, in_flight))


def _batch1_throughput(embedder: Embedder, texts: Sequence[str], seconds: float) -> float:
    """Sentences/s of back-to-back single-sentence calls, measured right next to the micro-batched run."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        embedder.embed([texts[n % len(texts)]])
        n += 1
    return round(n / (time.perf_counter() - start), 2)
