"""``aifleet analytics ...``: migrate, report, seed, bench, backup, restore, rebuild. The typer app is ``app``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from streams.analytics.errors import AnalyticsError
from streams.errors import AifleetError

app = typer.Typer(help="Usage analytics on ClickHouse (chDB embedded or a server).", no_args_is_help=True)


def _settings():  # type: ignore[no-untyped-def]
    from streams.settings import get_settings

    return get_settings()


def _fail(exc: AifleetError) -> typer.Exit:
    typer.echo(f"error: {exc.message}", err=True)
    return typer.Exit(code=75 if exc.retryable else 2)


@app.command()
def migrate(
    ttl_days: Annotated[
        int | None,
        typer.Option(min=1, help="Days usage events and prompts are kept (default: AIFLEET_CLICKHOUSE__TTL_DAYS, 90)."),
    ] = None,
    rollup_ttl_days: Annotated[int, typer.Option(min=1, help="Days rollups and alerts are kept.")] = 730,
    print_sql: Annotated[bool, typer.Option("--print", help="Print the rendered SQL and apply nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run every (idempotent) migration.")] = False,
) -> None:
    """Apply pending schemas/clickhouse migrations (ON CLUSTER when settings.clickhouse.cluster is set)."""
    from streams.analytics import migrate as m
    from streams.analytics.client import create_client

    settings = _settings()
    options = m.RenderOptions.from_settings(settings.clickhouse, ttl_days=ttl_days, rollup_ttl_days=rollup_ttl_days)
    if print_sql:
        typer.echo(m.render_all(options))
        return
    try:
        client = create_client(settings.clickhouse, home=settings.home)
        try:
            applied = m.migrate(client, options, force=force)
        finally:
            client.close()
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    typer.echo(f"applied: {', '.join(f'{v:03d}' for v in applied)}" if applied else "up to date")


@app.command()
def report(
    kind: Annotated[str, typer.Argument(help="cost, latency, errors or cache")],
    since: Annotated[str, typer.Option(help="7d, 24h, 30m, 2w or an ISO date/time")] = "7d",
    until: Annotated[str | None, typer.Option(help="End (ISO date/time); default now")] = None,
    by: Annotated[str | None, typer.Option(help="Comma list from: tenant,provider,model,tier,kind,...")] = None,
    tenant: Annotated[list[str] | None, typer.Option(help="Only these tenants (repeatable)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or html")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout")] = None,
) -> None:
    """Print a usage report (reads through the sink's query endpoint when chDB is owned elsewhere)."""
    from datetime import UTC, datetime

    from streams.analytics import reports as r
    from streams.analytics.client import open_reader

    settings = _settings()
    try:
        if fmt not in r.FORMATS:
            raise r.InvalidReportRequest(f"unknown format {fmt!r}; choose from {', '.join(r.FORMATS)}")
        now = datetime.now(UTC)
        request = r.ReportRequest(
            kind=kind,
            since=r.parse_since(since, now=now),
            until=r.parse_since(until, now=now) if until else now,
            by=r.parse_by(by),
            tenants=tuple(tenant or ()),
        )
        reader = open_reader(settings.clickhouse, home=settings.home)
        try:
            result = r.run_report(reader, request, database=settings.clickhouse.database)
            text = r.render(result, fmt, reader, database=settings.clickhouse.database)
        finally:
            reader.close()
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    if output:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def seed(
    events: Annotated[int, typer.Option(min=1, help="How many synthetic usage events")] = 100_000,
    days: Annotated[int, typer.Option(min=1, help="Spread them over this many days up to now")] = 7,
    batch: Annotated[int, typer.Option(min=1, help="Events per insert")] = 10_000,
    seed_value: Annotated[int, typer.Option("--seed", help="RNG seed (same seed: same event ids)")] = 0,
) -> None:
    """Generate synthetic usage events into the store (idempotent per seed), with a progress bar."""
    from datetime import timedelta

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.analytics.bench import seed as do_seed
    from streams.analytics.client import create_client
    from streams.analytics.migrate import RenderOptions
    from streams.analytics.migrate import migrate as do_migrate
    from streams.analytics.sink import UsageSink

    settings = _settings()
    try:
        client = create_client(settings.clickhouse, home=settings.home)
        try:
            do_migrate(client, RenderOptions.from_settings(settings.clickhouse))
            sink = UsageSink(settings.clickhouse, client=client)
            columns = (TextColumn("seeding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns) as progress:
                task = progress.add_task("seed", total=events)
                spent = do_seed(
                    sink,
                    events,
                    batch_size=batch,
                    seed_value=seed_value,
                    span=timedelta(days=days),
                    progress=lambda k: progress.advance(task, k),
                )
        finally:
            client.close()
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    rate = events / spent if spent else 0.0
    typer.echo(
        f"seeded {sink.stats.inserted} new events ({sink.stats.duplicates} already stored); {rate:,.0f} events/s"
    )


@app.command()
def bench(
    events: Annotated[int, typer.Option(help="Synthetic events to ingest")] = 1_000_000,
    batch: Annotated[int, typer.Option(help="Events per sink write")] = 10_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
    data_path: Annotated[Path | None, typer.Option(help="chDB path (default: a fresh temporary one)")] = None,
) -> None:
    """Ingest rate and cost-report query time over N events (chDB: a scratch store, not yours)."""
    from streams.analytics.bench import run_bench

    settings = _settings()
    ch = settings.clickhouse
    scratch = None
    if ch.backend == "chdb" and data_path is None:
        scratch = tempfile.TemporaryDirectory(prefix="aifleet-bench-")
        data_path = Path(scratch.name)
    try:
        result = run_bench(ch, events=events, batch_size=batch, data_path=data_path)
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    finally:
        if scratch is not None:
            scratch.cleanup()
    _print_figures(result.as_dict(), f"aifleet analytics bench ({result.backend})", as_json=as_json)


def _print_figures(figures: dict[str, Any], title: str, *, as_json: bool) -> None:
    """A bench's figures as JSON, or as a two-column table."""
    from rich.console import Console
    from rich.table import Table

    if as_json:
        typer.echo(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
    Console().print(table)


@app.command("bench-sink")
def bench_sink(
    events: Annotated[int, typer.Option(help="Usage events in the backlog")] = 200_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Catch-up rate of a fresh analytics process on a usage-topic backlog, against direct ingest (scratch stores)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.analytics.bench_sink import run_sink_bench

    settings = _settings()
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        tasks = {name: bar.add_task(name, total=events) for name in ("produce", "catch up")}
        try:
            result = run_sink_bench(settings, events=events, progress=lambda name, n: bar.advance(tasks[name], n))
        except AifleetError as exc:
            raise _fail(exc) from exc
    _print_figures(result.as_dict(), f"aifleet analytics bench-sink: {events:,} usage events", as_json=as_json)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"


@app.command()
def backup(
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            help="Backup directory, new (chDB: under backup_path, relative to it; default <backup_path>/<UTC time>)",
        ),
    ] = None,
) -> None:
    """BACKUP DATABASE to a directory (chDB: stop the analytics process first; a server: its allowed path)."""
    from streams.analytics import backup as b

    settings = _settings()
    ch = settings.clickhouse
    try:
        if ch.backend == "chdb":
            dest: str | Path = b.check_local_location(
                ch, to or b.default_destination(ch, settings.home), home=settings.home
            )
        else:
            dest = str(to) if to is not None else b.default_destination(ch, settings.home).name
        client = b.open_store(ch, home=settings.home)
        try:
            result = b.backup(client, ch.database, dest, cluster=ch.cluster)
        finally:
            client.close()
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"backed up database {result.database} to {result.location}: {result.files} files, "
        f"{_size(result.size_bytes)} in {result.seconds:.2f}s (backup id {result.id})"
    )


@app.command()
def restore(
    src: Annotated[
        Path, typer.Option("--from", help="A directory `analytics backup` wrote (relative: under backup_path)")
    ],
    replace: Annotated[bool, typer.Option("--replace", help="Drop the existing database first")] = False,
) -> None:
    """RESTORE DATABASE from a backup directory (chDB: stop the analytics process first)."""
    from streams.analytics import backup as b

    settings = _settings()
    ch = settings.clickhouse
    try:
        location: str | Path = b.check_local_location(ch, src, home=settings.home) if ch.backend == "chdb" else str(src)
        client = b.open_store(ch, home=settings.home)
        try:
            result = b.restore(client, ch.database, location, replace=replace, cluster=ch.cluster)
        finally:
            client.close()
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    what = "replaced" if result.replaced else "restored"
    typer.echo(
        f"{what} database {result.database} from {result.location}: {result.tables} tables in {result.seconds:.2f}s; "
        "start the analytics process to catch up from the usage topic"
    )


@app.command()
def rebuild(
    since: Annotated[
        str | None, typer.Option(help="Replay usage from this time (ISO date/time, UTC when naive; or 2h, 1d)")
    ] = None,
    from_earliest: Annotated[
        bool, typer.Option("--from-earliest", help="Replay everything the usage topic retains")
    ] = False,
) -> None:
    """Rewind the analytics process's consumer group on the usage topic (stop the analytics process first)."""
    from streams.analytics import rebuild as rb
    from streams.analytics.reports import parse_since

    if (since is None) == (not from_earliest):
        typer.echo("error: give exactly one of --since and --from-earliest", err=True)
        raise typer.Exit(code=2)
    settings = _settings()
    try:
        at = parse_since(since) if since is not None else None
        result = rb.rebuild(settings, since=at)
    except AnalyticsError as exc:
        raise _fail(exc) from exc
    for p in result.partitions:
        was = "nothing committed" if p.previous is None else f"was {p.previous}"
        typer.echo(f"  {result.topic}[{p.partition}]: offset {p.offset} ({was}; end {p.end})")
    origin = "the earliest retained event" if result.since is None else result.since.isoformat()
    typer.echo(
        f"reset group {result.group} on {result.topic} to {origin} in {result.seconds:.2f}s: "
        f"{result.to_replay:,} usage events to replay; start the analytics process "
        "(stored event ids are skipped, so the overlap is not counted twice)"
    )
