"""The ``aifleet`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streams.settings import Settings, get_settings

app = typer.Typer(help="aifleet: a Kafka-native AI gateway.", no_args_is_help=True, add_completion=False)
broker_app = typer.Typer(help="The embedded single-node KRaft broker.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")

out = Console()
err = Console(stderr=True)


def _settings(port: int | None = None, data_dir: Path | None = None) -> Settings:
    s = get_settings()
    updates: dict[str, Any] = {}
    if port is not None:
        updates["port"] = port
        updates["controller_port"] = port + 1
    if data_dir is not None:
        updates["data_dir"] = data_dir
    if updates:
        s = s.model_copy(update={"kafka": s.kafka.model_copy(update=updates)})
    return s


# -- broker ------------------------------------------------------------------------------------
@broker_app.command("start")
def broker_start(
    port: Annotated[int | None, typer.Option(help="Client port (controller uses port+1).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Log directory.")] = None,
) -> None:
    """Start the broker (idempotent) and print its bootstrap address."""
    from infra.kafka import broker

    s = _settings(port, data_dir)
    if s.bootstrap:
        err.print(f"AIFLEET_KAFKA_BOOTSTRAP is set ({s.bootstrap}): using that cluster, starting nothing")
        print(s.bootstrap)
        return
    cfg = broker.from_settings(s)
    with err.status("starting Kafka (first run fetches the jars with Maven)..."):
        pid = broker.start(cfg)
    err.print(f"broker pid {pid}, log {cfg.log_file}")
    print(cfg.bootstrap)


@broker_app.command("stop")
def broker_stop(
    port: Annotated[int | None, typer.Option()] = None, data_dir: Annotated[Path | None, typer.Option()] = None
) -> None:
    """Stop the broker that `aifleet broker start` started."""
    from infra.kafka import broker

    stopped = broker.stop(broker.from_settings(_settings(port, data_dir)))
    print("stopped" if stopped else "not running")


@broker_app.command("status")
def broker_status(
    port: Annotated[int | None, typer.Option()] = None, data_dir: Annotated[Path | None, typer.Option()] = None
) -> None:
    """Print the broker's state as JSON; exit 1 when it is not running."""
    from infra.kafka import broker

    st = broker.status(broker.from_settings(_settings(port, data_dir)))
    print(json.dumps(st, indent=2))
    raise typer.Exit(0 if st["answering"] else 1)


# -- processes ---------------------------------------------------------------------------------
@app.command()
def worker() -> None:
    """Run one worker (all agents) in the foreground."""
    from streams.worker import run

    run()


@app.command()
def sink() -> None:
    """Run the analytics process (usage sink into ClickHouse, alerting agents) in the foreground."""
    from streams.worker import run

    run(role="analytics")


@app.command()
def emulator(
    host: str = "127.0.0.1",
    port: Annotated[int | None, typer.Option()] = None,
    latency_ms: Annotated[float, typer.Option(help="Added latency per call.")] = 0.0,
    seed: int = 0,
) -> None:
    """Run the provider emulator (OpenAI-format JSON and SSE on loopback)."""
    from infra.emulator.server import serve

    serve(host, port or get_settings().emulator.port, latency_ms=latency_ms, seed=seed)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@app.command()
def up(
    workers: Annotated[int, typer.Option(help="Worker processes in the consumer group.")] = 1,
    latency_ms: Annotated[float, typer.Option(help="Emulator latency, when the emulator is started.")] = 0.0,
) -> None:
    """Start what is missing (broker, emulator, workers) and run until Ctrl-C or SIGTERM."""
    from streams.stack import Stack

    stack = Stack(get_settings(), workers=workers, emulator_latency_ms=latency_ms)
    with stack.running(err, "starting aifleet...", "stopping..."):
        err.print(
            f"aifleet is up: bootstrap {stack.bootstrap}, {workers} worker(s), "
            f"provider {'emulator ' + stack.emulator_url if stack.emulator_url else 'APIs'}; logs in {stack.logs}"
        )
        err.print("Ctrl-C to stop")
        _wait_for_signal()


# -- using it ----------------------------------------------------------------------------------
@app.command()
def send(
    prompt: str,
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "demo",
    stream: Annotated[bool, typer.Option(help="Stream the answer chunk by chunk.")] = False,
    model: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response event as JSON.")] = False,
    timeout: float = 60.0,
) -> None:
    """Send one prompt through a running aifleet and print the answer."""
    from schemas.response import Response
    from streams.client import AifleetClient

    s = get_settings()
    bootstrap = s.kafka_servers

    async def go() -> Response:
        async with AifleetClient.from_settings(s, bootstrap) as c:
            req = c.build(prompt, tenant=tenant, model=model, stream=stream)
            if not stream:
                return await c.request(req, timeout=timeout)
            async for item in c.stream(req, timeout=timeout):
                if isinstance(item, Response):
                    print()
                    return item
                if item.delta:
                    print(item.delta, end="", flush=True)
            raise RuntimeError("stream ended without a response")

    resp = asyncio.run(go())
    if as_json:
        print(resp.model_dump_json(indent=2, exclude_none=True))
    elif resp.status == "error" and resp.error:
        err.print(f"[red]error[/red] {resp.error.reason.value}: {resp.error.message}")
        raise typer.Exit(2)
    elif not stream:
        print(resp.output)
    if not as_json:
        err.print(
            f"[dim]{resp.provider}/{resp.model} · {resp.usage.input_tokens}+{resp.usage.output_tokens} tokens"
            f" · ${resp.cost_usd:.6f} · {resp.latency.total_ms if resp.latency else 0:.1f} ms[/dim]"
        )


@app.command()
def demo() -> None:
    """Run the main job on the embedded defaults: start everything, send traffic, report cost, stop."""
    from streams.demo import run_demo

    raise typer.Exit(run_demo(get_settings(), out))


bench_app = typer.Typer(help="Benchmarks: the pipeline (default), local inference, analytics.")
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    requests: Annotated[int, typer.Option(help="Requests to send.")] = 1000,
    concurrency: Annotated[int, typer.Option(help="Requests outstanding at once.")] = 100,
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 1,
    latency_ms: Annotated[float, typer.Option(help="Emulator latency per call.")] = 0.0,
    attach: Annotated[bool, typer.Option(help="Use an aifleet that is already up; start nothing.")] = False,
    catalog: Annotated[
        Path | None, typer.Option(help="Provider catalog for the workers (default: the bench catalog, no rate limits).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each response.")] = 60.0,
    analytics: Annotated[bool, typer.Option(help="Also run the analytics process (usage sink, alerts).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Drive requests through the real pipeline against the emulator; print throughput and latency."""
    if ctx.invoked_subcommand:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from streams.bench import emulator_reset, emulator_stats, run_load
    from streams.client import AifleetClient
    from streams.stack import Stack

    s = get_settings()
    from streams.settings import BENCH_CONFIG_FILE

    stack = (
        None
        if attach
        else Stack(
            s,
            workers=workers,
            analytics=analytics,
            emulator_latency_ms=latency_ms,
            config_file=catalog or BENCH_CONFIG_FILE,
        )
    )
    try:
        if stack is not None:
            with err.status("starting broker, emulator and workers..."):
                stack.start()
        bootstrap = stack.bootstrap if stack else s.kafka_servers
        emu = stack.emulator_url if stack else (s.provider_base_url or f"http://127.0.0.1:{s.emulator.port}")
        with err.status("waiting for the pipeline to answer..."):
            if stack is not None:
                stack.wait_ready()
        emulator_reset(emu)

        async def go() -> Any:
            async with AifleetClient.from_settings(s, bootstrap) as c:
                with Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=err,
                    transient=as_json,
                ) as progress:
                    task = progress.add_task("requests", total=requests)
                    result, _ = await run_load(
                        c,
                        requests=requests,
                        concurrency=concurrency,
                        timeout_s=timeout,
                        on_done=lambda: progress.advance(task),
                    )
                return result

        result = asyncio.run(go())
        stats = emulator_stats(emu)
        result = result.model_copy(
            update={"workers": workers if stack else None, "provider_calls": stats["total_calls"] if stats else None}
        )
        if stack is not None:
            stack.check_alive()
    finally:
        if stack is not None:
            with err.status("stopping..."):
                stack.stop()
    if as_json:
        print(result.model_dump_json())
        return
    table = Table(title=f"aifleet bench: {requests} requests, concurrency {concurrency}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("sent", "ok", "errors", "lost", "duplicates", "provider_calls", "throughput_rps", "elapsed_s"):
        table.add_row(key, str(getattr(result, key)))
    for key in ("latency_ms", "overhead_ms"):
        p = getattr(result, key)
        table.add_row(key, f"p50 {p.p50:.1f} · p95 {p.p95:.1f} · p99 {p.p99:.1f}")
    out.print(table)


@bench_app.command("scale")
def bench_scale(
    workers: Annotated[str, typer.Option(help="Comma-separated worker counts.")] = "1,2,4",
    requests: Annotated[int, typer.Option(help="Requests per worker count.")] = 5000,
    concurrency: Annotated[int, typer.Option(help="Requests outstanding at once.")] = 200,
    latency_ms: Annotated[float, typer.Option(help="Emulator latency per call.")] = 0.0,
    analytics: Annotated[bool, typer.Option(help="Also run the analytics process (usage sink, alerts).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """The same load at several worker counts in one run: throughput, latency, CPU per request."""
    import json

    from streams.bench_scale import run_scale

    try:
        counts = [int(x) for x in workers.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{workers!r} is not a comma-separated list of worker counts", param_hint="--workers"
        ) from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("give at least one worker count, each 1 or more", param_hint="--workers")
    with err.status("scale bench...") as status:
        rows = run_scale(
            counts,
            requests=requests,
            concurrency=concurrency,
            latency_ms=latency_ms,
            analytics=analytics,
            say=status.update,
        )
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows]))
        return
    kinds = sorted({k for r in rows for k in r.cpu_s_per_1000})
    table = Table(title=f"scale-out: {requests} requests at concurrency {concurrency}, {os.cpu_count()} CPUs")
    for col in (
        "workers",
        "partitions",
        "ok",
        "lost",
        "dup",
        "req/s",
        "p50 ms",
        "p99 ms",
        *[f"{k} cpu s/1k" for k in kinds],
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r.workers),
            str(r.partitions),
            str(r.ok),
            str(r.lost),
            str(r.duplicates),
            f"{r.throughput_rps:.0f}",
            f"{r.latency_ms.p50:.0f}",
            f"{r.latency_ms.p99:.0f}",
            *[f"{r.cpu_s_per_1000.get(k, 0):.2f}" for k in kinds],
        )
    out.print(table)


@bench_app.command("embed")
def bench_embed(
    requests: Annotated[int, typer.Option(help="Embedding requests (one sentence each).")] = 2000,
    concurrency: Annotated[int, typer.Option(help="Requests outstanding at once.")] = 128,
    texts: Annotated[int, typer.Option(help="Sentences per request.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The infer stage through Kafka against the bare model, measured in one run."""
    from streams.bench_embed import run_embed_bench
    from streams.settings import BENCH_CONFIG_FILE
    from streams.stack import Stack

    s = get_settings()
    stack = Stack(s, workers=1, analytics=False, config_file=BENCH_CONFIG_FILE)
    with stack.running(err, "starting broker, emulator and a worker..."):
        with err.status(f"{requests} embedding requests through Kafka, with the bare model before and after..."):
            result = asyncio.run(
                run_embed_bench(stack.bootstrap, s, requests=requests, concurrency=concurrency, texts_per_request=texts)
            )
        stack.check_alive()
    if as_json:
        print(result.model_dump_json())
        return
    table = Table(title=f"local embeddings: {result.variant} on {result.execution_provider}")
    table.add_column("path")
    table.add_column("sentences/s", justify="right")
    table.add_row("through Kafka (gate -> infer agent -> responses)", f"{result.kafka_sentences_per_s:.1f}")
    before, after = result.bare_before_after
    table.add_row(
        f"bare model, batches of {result.max_batch} (mean of {before:.0f} before and {after:.0f} after)",
        f"{result.bare_sentences_per_s:.1f}",
    )
    table.add_row("ratio", f"{result.ratio:.3f}")
    out.print(table)


def _mount_subcommands() -> None:
    """Commands that live beside the packages they drive."""
    from models.cli import app as models_app
    from models.cli import bench as infer_bench
    from streams.analytics.cli import app as analytics_app
    from streams.analytics.cli import bench as analytics_bench
    from streams.analytics.cli import report as report_command

    app.add_typer(models_app, name="models")
    app.add_typer(analytics_app, name="analytics")
    app.command("report", help="Cost, latency, error and cache reports from ClickHouse.")(report_command)
    bench_app.command("infer", help="Local ONNX inference: sentences/s and latency by batch size.")(infer_bench)
    bench_app.command("analytics", help="ClickHouse ingest rate and report query time.")(analytics_bench)
    from streams.cache.cli import bench as cache_bench
    from streams.soak_cli import soak

    app.command("soak", help="A steady rate for a long while: memory (RSS) and latency by minute.")(soak)

    bench_app.command("cache", help="Dedup and caching: provider calls vs distinct requests, hit vs miss latency.")(
        cache_bench
    )
    for module, name, help_text in (
        ("streams.routing.cli", "simulate", "Deterministic simulations (routing)."),
        ("streams.ops.cli", "scale", "Scaling advice from consumer lag, CPU and latency."),
        ("streams.cache.cli", "cache", "The response cache: purge, semantic-threshold evaluation."),
        ("streams.chaos_cli", "chaos", "Fault suite: kill -9, broker restart, ClickHouse away, provider away, junk."),
    ):
        try:
            sub = __import__(module, fromlist=["app"]).app
        except (ImportError, AttributeError):
            continue
        app.add_typer(sub, name=name, help=help_text)


_mount_subcommands()


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """What ordinary bad input or a missing broker raises: said in one line, not as a traceback."""
    from aiokafka.errors import KafkaError
    from confluent_kafka import KafkaException
    from pydantic import ValidationError

    from streams.errors import AifleetError

    return (AifleetError, OSError, OverflowError, ValidationError, KafkaError, KafkaException)


def main() -> None:
    """Console-script entry point.

    SIGTERM (``timeout``, CI, ``docker stop``) exits through the ``finally`` blocks, so the brokers,
    emulators and workers a command started are stopped, not orphaned. Errors that ordinary bad input or
    an unreachable broker cause are one ``error:`` line and exit code 2.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except _expected_errors() as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
