"""``aifleet scale``: consumer lag, scaling advice and the lag exporter.

Defaults come from settings: the worker group is ``<worker.app_id>-<kafka.topic_prefix>`` (the Faust
app id, which is the consumer group), the topics are the ones the workers consume
(``<prefix>.requests`` and ``<prefix>.routed``), the cluster is ``AIFLEET_KAFKA_BOOTSTRAP`` with
the SASL/SSL settings of ``AIFLEET_KAFKA__*``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.errors import AifleetError
from streams.kafka_auth import librdkafka_config
from streams.ops import cpu as cpu_mod
from streams.ops import lag as lag_mod
from streams.ops.scale import ScalePolicy, advise
from streams.settings import Settings, get_settings
from streams.topics import Topics

app = typer.Typer(help="Consumer lag, scaling advice and the lag exporter.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

BootstrapOpt = Annotated[str | None, typer.Option(help="Cluster (host:port,...); default from settings.")]
GroupOpt = Annotated[str | None, typer.Option(help="Consumer group; default <app_id>-<topic_prefix>.")]
TopicOpt = Annotated[list[str] | None, typer.Option("--topic", help="Topic (repeatable); default requests, routed.")]


def default_group(settings: Settings) -> str:
    """The workers' consumer group: the Faust app id."""
    return settings.pipeline_group


def default_topics(settings: Settings) -> list[str]:
    """The topics whose lag drives scaling."""
    t = Topics.from_settings(settings)
    return [t.requests, t.routed]


def _target(bootstrap: str | None, group: str | None, topics: list[str] | None) -> tuple[str, str, list[str], dict]:
    s = get_settings()
    conf = librdkafka_config(s, bootstrap)
    return conf["bootstrap.servers"], group or default_group(s), topics or default_topics(s), conf


def _read_lag(bootstrap: str, group: str, topics: list[str], conf: dict, timeout_s: float) -> lag_mod.LagReport:
    try:
        return lag_mod.consumer_lag(bootstrap, group, topics, client_config=conf, timeout_s=timeout_s)
    except AifleetError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command("advise")
def advise_cmd(
    workers: Annotated[int, typer.Option(help="Workers running now.")] = 1,
    p95: Annotated[float | None, typer.Option(help="End-to-end p95 latency in seconds, if known.")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPU % to use instead of measuring /proc/stat.")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions; default read from the topics.")] = None,
    last_scale_at: Annotated[float | None, typer.Option(help="Unix time of the last scaling change.")] = None,
    target_lag: Annotated[int, typer.Option(help="Queued records per worker.")] = 100,
    cooldown: Annotated[float, typer.Option(help="Seconds between changes.")] = 60.0,
    bootstrap: BootstrapOpt = None,
    group: GroupOpt = None,
    topic: TopicOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cluster.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Read the group's lag (and this host's CPU) and print how many workers to run, and why."""
    bs, grp, topics, conf = _target(bootstrap, group, topic)
    report = _read_lag(bs, grp, topics, conf, timeout)
    cpu_pct = cpu if cpu is not None else cpu_mod.cpu_percent()
    parts = partitions or report.max_partitions or get_settings().kafka.partitions
    policy = ScalePolicy(target_lag_per_worker=target_lag, cooldown_s=cooldown)
    advice = advise(report.total, cpu_pct, p95, workers, parts, last_scale_at, time.time(), policy)
    if as_json:
        doc = {
            "group": grp,
            "lag_total": report.total,
            "lag_by_topic": report.by_topic(),
            "missing_topics": report.missing_topics,
            "partitions": parts,
            "cpu_pct": cpu_pct,
            "p95_latency_s": p95,
            **advice.model_dump(),
        }
        print(json.dumps(doc))
        return
    table = Table(title=f"aifleet scale advise: group {grp}")
    table.add_column("signal")
    table.add_column("value", justify="right")
    table.add_row("lag (total)", str(report.total))
    for name, value in report.by_topic().items():
        table.add_row(f"lag {name}", str(value))
    table.add_row("partitions", str(parts))
    table.add_row("cpu", "n/a" if cpu_pct is None else f"{cpu_pct:.1f}%")
    table.add_row("p95 latency", "n/a" if p95 is None else f"{p95:.2f}s")
    table.add_row("workers now", str(advice.current_workers))
    table.add_row("[bold]workers to run[/bold]", f"[bold]{advice.workers}[/bold]")
    table.add_row("desired (no cooldown)", str(advice.desired_workers))
    out.print(table)
    for topic_name in report.missing_topics:
        err.print(f"[yellow]topic {topic_name} does not exist[/yellow]")
    out.print(f"[bold]{advice.action}[/bold]: {advice.reason}")
    for line in advice.reasons:
        out.print(f"  - {line}")


@app.command()
def lag(
    bootstrap: BootstrapOpt = None,
    group: GroupOpt = None,
    topic: TopicOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cluster.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the group's lag partition by partition."""
    bs, grp, topics, conf = _target(bootstrap, group, topic)
    report = _read_lag(bs, grp, topics, conf, timeout)
    if as_json:
        print(
            json.dumps(
                {
                    "group": grp,
                    "total": report.total,
                    "missing_topics": report.missing_topics,
                    "partitions": [
                        {
                            "topic": p.topic,
                            "partition": p.partition,
                            "committed": p.committed,
                            "end": p.end,
                            "lag": p.lag,
                        }
                        for p in report.partitions
                    ],
                }
            )
        )
        return
    table = Table(title=f"consumer lag: group {grp} (total {report.total})")
    for col in ("topic", "partition", "committed", "end", "lag"):
        table.add_column(col, justify="left" if col == "topic" else "right")
    for p in report.partitions:
        table.add_row(
            p.topic, str(p.partition), "-" if p.committed is None else str(p.committed), str(p.end), str(p.lag)
        )
    out.print(table)


@app.command("lag-exporter")
def lag_exporter(
    interval: Annotated[float, typer.Option(help="Seconds between lag reads.")] = 10.0,
    port: Annotated[int | None, typer.Option(help="Metrics port; default $AIFLEET_METRICS_PORT or 9464.")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address; default $AIFLEET_METRICS_HOST or 127.0.0.1.")] = None,
    bootstrap: BootstrapOpt = None,
    group: GroupOpt = None,
    topic: TopicOpt = None,
) -> None:
    """Serve aifleet_consumer_lag on /metrics, refreshed every --interval seconds, until SIGTERM."""
    from streams.ops.exporter import run_exporter

    bs, grp, topics, conf = _target(bootstrap, group, topic)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_exporter(bs, grp, topics, interval_s=interval, port=port, host=host, client_config=conf, stop=stop)


if __name__ == "__main__":
    app()
