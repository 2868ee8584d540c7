"""``aifleet soak``: the long steady-rate run, printed as a table by minute."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.soak import Bucket, SoakResult

out = Console()
err = Console(stderr=True)


def soak(
    minutes: Annotated[float, typer.Option(help="How long to run.")] = 15.0,
    rate: Annotated[float, typer.Option(help="Requests per second, sent open-loop.")] = 100.0,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    latency_ms: Annotated[float, typer.Option(help="Emulator latency per call.")] = 50.0,
    bucket_s: Annotated[float, typer.Option(help="Seconds per row of the table.")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """A steady rate through the real pipeline for a long while: memory (RSS) and latency over time."""
    from streams.client import AifleetClient
    from streams.settings import BENCH_CONFIG_FILE, get_settings
    from streams.soak import run_soak
    from streams.stack import Stack

    s = get_settings()

    def show(b: Bucket) -> None:
        if not as_json:
            rss = ", ".join(f"{p.name} {p.rss_mb:.0f}" for p in b.processes)
            err.print(
                f"[{b.start_s:6.0f}s] sent {b.sent} answered {b.answered} lost {b.lost} "
                f"p50 {b.latency_ms.p50:.0f} ms p99 {b.latency_ms.p99:.0f} ms | RSS MB: {rss}"
            )

    stack = Stack(s, workers=workers, emulator_latency_ms=latency_ms, config_file=BENCH_CONFIG_FILE)
    with stack.running(err, "starting broker, emulator, analytics and workers..."):

        async def go() -> SoakResult:
            async with AifleetClient.from_settings(s, stack.bootstrap) as c:
                return await run_soak(
                    c,
                    stack,
                    minutes=minutes,
                    rate_per_s=rate,
                    bucket_s=bucket_s,
                    timeout_s=min(30.0, bucket_s),
                    on_bucket=show,
                )

        result = asyncio.run(go())
    if as_json:
        typer.echo(result.model_dump_json())
        return
    out.print(render(result))


def render(result: SoakResult) -> Table:
    names = sorted({p.name for b in result.buckets for p in b.processes})
    table = Table(
        title=f"soak: {result.rate_per_s:g} req/s for {result.minutes:g} min, one row per {result.bucket_s:g} s"
    )
    for col in ("t (s)", "sent", "answered", "lost", "p50 ms", "p99 ms", *[f"{n} MB" for n in names]):
        table.add_column(col, justify="right")
    for b in result.buckets:
        table.add_row(
            f"{b.start_s:.0f}",
            str(b.sent),
            str(b.answered),
            str(b.lost),
            f"{b.latency_ms.p50:.0f}",
            f"{b.latency_ms.p99:.0f}",
            *[f"{b.rss(n):.0f}" for n in names],
        )
    table.caption = (
        f"sent {result.sent}, answered {result.answered}, lost {result.lost}, errors {result.errors}; "
        f"RSS growth (last quarter - first quarter, MB): "
        + ", ".join(f"{n} {g:+.1f}" for n, g in result.rss_growth_mb.items())
        + f"; p99 last/first quarter {result.p99_creep:.2f}"
    )
    return table
