"""``aifleet chaos``: run the fault suite and print its table (see ``streams.chaos``)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streams.chaos import SCENARIOS, ChaosOptions, ChaosReport, ScenarioName, run_suite
from streams.errors import AifleetError
from streams.settings import get_settings

app = typer.Typer(help="The fault suite.", add_completion=False)
out = Console(width=None if sys.stdout.isatty() else 150)  # the table is wide; do not squeeze it into 80
err = Console(stderr=True)


def render(report: ChaosReport) -> Table:
    """The suite's table: one row per scenario."""
    o = report.options
    table = Table(
        title=f"aifleet chaos: {o.requests} requests per scenario, concurrency {o.concurrency}, {o.workers} workers"
    )
    for column in ("scenario", "sent", "answered", "ok", "errors", "lost", "dup responses", "dup provider calls"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    table.add_column("recovery (s)", justify="right")
    table.add_column("verdict")
    for r in report.results:
        table.add_row(
            r.scenario,
            str(r.sent),
            str(r.answered),
            str(r.ok),
            str(r.errors),
            str(r.lost),
            str(r.duplicate_responses),
            str(r.duplicate_provider_calls),
            "-" if r.recovery_s is None else f"{r.recovery_s:.2f}",
            "[green]pass[/green]" if r.passed else "[red]FAIL[/red]",
        )
    return table


@app.callback(invoke_without_command=True)
def chaos(
    requests: Annotated[int, typer.Option(help="Valid requests per scenario.")] = 10_000,
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", help=f"Run only these (repeatable): {', '.join(SCENARIOS)}.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Requests outstanding at once.")] = 100,
    workers: Annotated[int, typer.Option(help="Worker processes per scenario.")] = 2,
    latency_ms: Annotated[float, typer.Option(help="Emulated provider latency per call.")] = 20.0,
    clickhouse_pause: Annotated[float, typer.Option(help="Seconds the analytics process (chDB) is stopped.")] = 30.0,
    provider_mode: Annotated[str, typer.Option(help="How the primary is away: errors (503) or timeouts.")] = "errors",
    malformed: Annotated[int | None, typer.Option(help="Malformed records in the flood (default requests/4).")] = None,
    scenario_timeout: Annotated[float, typer.Option(help="Bound on each scenario, in seconds.")] = 420.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Inject faults into a real deployment on loopback; print sent, answered, lost, duplicates and recovery.

    Starts a broker of its own on AIFLEET_KAFKA__PORT (the suite restarts it), and per scenario an emulator,
    workers and, for clickhouse_away, the analytics process. Exits 1 when a scenario did not pass.
    """
    unknown = [s for s in scenario or [] if s not in SCENARIOS]
    if unknown:
        raise typer.BadParameter(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if provider_mode not in ("errors", "timeouts"):
        raise typer.BadParameter("--provider-mode is errors or timeouts")
    chosen: list[ScenarioName] = [s for s in SCENARIOS if s in (scenario or SCENARIOS)]
    options = ChaosOptions(
        requests=requests,
        scenarios=chosen,
        concurrency=concurrency,
        workers=workers,
        latency_ms=latency_ms,
        clickhouse_pause_s=clickhouse_pause,
        provider_mode=provider_mode,  # type: ignore[arg-type]
        malformed=malformed,
        scenario_timeout_s=scenario_timeout,
    )
    # a client that lost its broker logs every reconnection attempt; the table says what happened
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        report = run_suite(options, get_settings(), say=lambda m: err.print(f"[dim]{m}[/dim]"))
    except AifleetError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(report.model_dump_json())
    else:
        out.print(render(report))
        for r in report.results:
            out.print(f"[bold]{r.scenario}[/bold]: recovery = {r.recovery}")
            details = {**r.measurements, **({"error_reasons": r.error_reasons} if r.error_reasons else {})}
            out.print("  " + ", ".join(f"{k}={v}" for k, v in details.items() if k != "deployment_s"))
            failed = [k for k, v in r.checks.items() if not v]
            if failed:
                out.print(f"  [red]failed checks[/red]: {', '.join(failed)}")
            for note in r.notes:
                out.print(f"  [dim]{note}[/dim]")
    raise typer.Exit(0 if report.passed else 1)
