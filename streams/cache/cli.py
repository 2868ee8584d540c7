"""``aifleet cache ...``: purge a tenant's cached answers, evaluate the semantic threshold."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="The response cache: purge, semantic-threshold evaluation.", no_args_is_help=True)
out = Console()


@app.command()
def purge(
    tenant: Annotated[str | None, typer.Option(help="Purge this tenant's scope.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Purge every scope.")] = False,
) -> None:
    """Drop cached answers (sent through the cache topic to every partition's owner)."""
    from streams.cache.purge import send_purge
    from streams.catalog import cached_catalog
    from streams.kafka_auth import librdkafka_config
    from streams.settings import get_settings
    from streams.topics import Topics

    if (tenant is None) == (not everything):
        raise typer.BadParameter("give --tenant T or --all")
    settings = get_settings()
    scope = "*" if everything else cached_catalog(settings.config_file).cache_scope_of(tenant or "")
    purge_id, partitions = send_purge(
        settings.kafka_servers,
        Topics.from_settings(settings).cache,
        scope,
        client_config=librdkafka_config(settings),
    )
    out.print(f"purge {purge_id} of scope {scope!r} sent to {partitions} partitions")


@app.command("eval-semantic")
def eval_semantic(
    threshold: Annotated[float | None, typer.Option(help="Threshold to report on (default: the setting).")] = None,
) -> None:
    """Precision and hit rate of the semantic cache on the project's labelled paraphrase set."""
    from streams.cache.evaluate import evaluate, sweep
    from streams.settings import get_settings

    chosen = threshold if threshold is not None else get_settings().cache.semantic_threshold
    table = Table(title="semantic cache on the labelled pairs (all-MiniLM-L6-v2, int8)")
    for col in ("threshold", "precision", "hit rate (recall)", "false hits", "pairs"):
        table.add_column(col, justify="right")
    for row in sweep():
        style = "bold" if abs(row.threshold - chosen) < 1e-9 else None
        table.add_row(
            f"{row.threshold:.2f}",
            f"{row.precision:.3f}",
            f"{row.hit_rate:.3f}",
            str(row.false_hits),
            str(row.pairs),
            style=style,
        )
    out.print(table)
    r = evaluate(chosen)
    out.print(f"threshold {chosen:.2f}: precision {r.precision:.3f}, hit rate {r.hit_rate:.3f} on {r.pairs} pairs")


def bench(
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 2000,
    concurrency: Annotated[int, typer.Option(help="Requests outstanding at once.")] = 100,
    repeat_ratio: Annotated[float, typer.Option(help="Share of exact repeats of earlier requests.")] = 0.5,
    concurrent_ratio: Annotated[float, typer.Option(help="Share of twins sent with their original.")] = 0.1,
    latency_ms: Annotated[float, typer.Option(help="Emulator latency per call.")] = 0.0,
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Provider calls against distinct requests, and hit against miss latency, through the real pipeline."""
    import asyncio
    import time

    from streams.bench import emulator_reset, emulator_stats
    from streams.bench_cache import build_workload, run_cache_load, summarise, workload_calls
    from streams.client import AifleetClient
    from streams.settings import BENCH_CONFIG_FILE, get_settings
    from streams.stack import Stack

    s = get_settings()
    workload = build_workload(requests, repeat_ratio=repeat_ratio, concurrent_ratio=concurrent_ratio, tenant="bench")
    stack = Stack(s, workers=workers, emulator_latency_ms=latency_ms, config_file=BENCH_CONFIG_FILE)
    err = Console(stderr=True)
    with stack.running(err, "starting broker, emulator and workers..."):
        emulator_reset(stack.emulator_url)

        async def go() -> tuple[dict[str, list[float]], list, int, int, float]:  # type: ignore[type-arg]
            async with AifleetClient.from_settings(s, stack.bootstrap) as c:
                with err.status(f"sending {requests} requests..."):
                    t0 = time.perf_counter()
                    lat, responses, lost = await run_cache_load(c, workload, concurrency=concurrency)
                    elapsed = time.perf_counter() - t0
                    await asyncio.sleep(2.0)  # late duplicates would arrive now
                return lat, responses, lost, c.duplicates, elapsed

        lat, responses, lost, dups, elapsed = asyncio.run(go())
        stats = emulator_stats(stack.emulator_url)
    result = summarise(
        workload,
        lat,
        responses,
        lost=lost,
        duplicates=dups,
        provider_calls=workload_calls(stats, workload),
        elapsed_s=elapsed,
    )
    if as_json:
        typer.echo(result.model_dump_json())
        return
    table = Table(
        title=f"cache bench: {result.sent} requests ({repeat_ratio:.0%} repeats, {concurrent_ratio:.0%} twins)"
    )
    for col in ("", "count", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for name, n, p in (
        ("miss (provider call)", result.misses, result.miss_latency_ms),
        ("coalesced", result.coalesced, result.coalesced_latency_ms),
        ("hit", result.hits, result.hit_latency_ms),
    ):
        table.add_row(name, str(n), f"{p.p50:.1f}", f"{p.p95:.1f}", f"{p.p99:.1f}")
    out.print(table)
    out.print(
        f"distinct requests {result.distinct}, provider calls {result.provider_calls}, lost {result.lost}, "
        f"errors {result.errors}, duplicates {result.duplicates}; hit p99 / miss p99 = {result.hit_to_miss_p99}"
    )
