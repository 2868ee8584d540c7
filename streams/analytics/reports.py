"""Usage reports: cost, latency, errors and cache, grouped by an allow-listed set of columns.

Each report is a SQL file under ``schemas/reports/`` with ClickHouse bound parameters
(``{since:DateTime64(3, 'UTC')}``, ``{tenants:Array(String)}``); user input is only ever a
parameter. The one thing that becomes SQL text, the ``--by`` grouping, is checked against
``GROUP_COLUMNS`` and replaced by fixed expressions. Every report reads the deduplicated base
table with ``FINAL``, so replayed events count once.

Reports take a ``Reader`` (``streams.analytics.client.open_reader``): a client, or the loopback
endpoint of the process that owns an embedded chDB store.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape
from pathlib import Path
from typing import Any, Literal

import orjson

from schemas.alert import Alert
from streams.analytics.client import Reader, check_identifier, rows_as_dicts
from streams.analytics.errors import InvalidReportRequest

REPORTS_DIR = Path(__file__).resolve().parents[2] / "schemas" / "reports"
ReportKind = Literal["cost", "latency", "errors", "cache"]
ReportFormat = Literal["table", "csv", "json", "html"]
REPORT_KINDS: tuple[str, ...] = ("cost", "latency", "errors", "cache")
FORMATS: tuple[str, ...] = ("table", "csv", "json", "html")

# --by name -> SQL expression. Nothing else ever reaches the SQL text.
GROUP_COLUMNS: Mapping[str, str] = {
    "tenant": "tenant",
    "provider": "provider",
    "model": "model",
    "tier": "tier",
    "kind": "kind",
    "status": "status",
    "error_reason": "error_reason",
    "region": "region",
    "worker": "worker",
    "route_reason": "route_reason",
    "day": "toDate(ts)",
    "hour": "toStartOfHour(ts)",
}
HIDDEN_COLUMNS = frozenset({"q"})
_SPAN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
# What a report window may span: nothing is stored before 1970, and DateTime64 ends in 2299.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True)
class ReportRequest:
    """What to report on."""

    kind: str
    since: datetime
    until: datetime
    by: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()


@dataclass
class Report:
    """A report's result: ordered columns and rows of plain values."""

    request: ReportRequest
    columns: list[str]
    rows: list[dict[str, Any]]
    extras: dict[str, Any] = field(default_factory=dict)

    def total(self, column: str) -> Any:
        """Sum of one numeric column over all rows (Decimal for money columns)."""
        values = [r[column] for r in self.rows]
        return sum(values, Decimal(0) if values and isinstance(values[0], Decimal) else 0)


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``30m``, ``2w``, ``90s`` ago, or an ISO date/time (UTC when naive).

    The result must lie in ``[EARLIEST, LATEST]`` (what the store's ``DateTime64`` columns hold and
    what a report can mean); anything else, a span too large to compute included, is an
    ``InvalidReportRequest``.
    """
    now = now or datetime.now(UTC)
    match = _SPAN.match(text)
    if match:
        try:
            result = now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        except (OverflowError, ValueError) as exc:  # more than timedelta or datetime can hold
            raise InvalidReportRequest(f"the span {text.strip()!r} reaches back before {EARLIEST:%Y-%m-%d}") from exc
    else:
        try:
            parsed = datetime.fromisoformat(text.strip())
        except ValueError as exc:
            raise InvalidReportRequest(f"--since must look like 7d, 24h, 30m or an ISO date: {text!r}") from exc
        try:
            result = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00
            raise InvalidReportRequest(f"{text.strip()!r} is before {EARLIEST:%Y-%m-%d}") from exc
    if not EARLIEST <= result <= LATEST:
        raise InvalidReportRequest(
            f"{text.strip()!r} is {result:%Y-%m-%d %H:%M} UTC: reports cover {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}"
        )
    return result


def parse_by(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validate a ``--by`` list (comma-separated or a sequence) against ``GROUP_COLUMNS``."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    unknown = [n for n in names if n not in GROUP_COLUMNS]
    if unknown:
        raise InvalidReportRequest(f"cannot group by {unknown}; choose from {', '.join(GROUP_COLUMNS)}")
    return names


def load_sql(name: str, database: str, by: Sequence[str] = ()) -> str:
    """Render ``schemas/reports/<name>.sql``: only the database and allow-listed groupings are text."""
    path = REPORTS_DIR / f"{check_identifier(name, 'report name')}.sql"
    if not path.is_file():
        raise InvalidReportRequest(f"no such report: {name}")
    db = check_identifier(database, "database name")
    by = parse_by(list(by))
    dims = "".join(f"{GROUP_COLUMNS[b]} AS {b}, " for b in by)
    group_by = f"GROUP BY {', '.join(by)}" if by else ""
    values = {"db": db, "dims": dims, "group_by": group_by}

    def substitute(match: re.Match[str]) -> str:
        return values[match.group(1)]

    body = "\n".join(ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.lstrip().startswith("--"))
    return _PLACEHOLDER.sub(substitute, body)


def _params(since: datetime, until: datetime, tenants: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "since": since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        "until": until.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        "tenants": list(tenants),
    }


def _utc(value: Any) -> Any:
    """An aware datetime in UTC; anything else unchanged.

    chDB takes the process's time zone (``TZ``) as its session time zone, and clickhouse-connect
    returns values of ``DateTime`` expressions without an explicit zone (``toStartOfHour(ts)``,
    ``toStartOfInterval``) as aware datetimes in that zone: the right instant, the wrong wall clock.
    Reports are in UTC wherever they run. (Naive values come from the ``'UTC'`` columns: UTC already.)
    """
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def run_report(reader: Reader, request: ReportRequest, *, database: str = "aifleet") -> Report:
    """Run one report and return its rows."""
    if request.kind not in REPORT_KINDS:
        raise InvalidReportRequest(f"unknown report {request.kind!r}; choose from {', '.join(REPORT_KINDS)}")
    if request.until <= request.since:
        raise InvalidReportRequest("the report window is empty (until <= since)")
    sql = load_sql(request.kind, database, request.by)
    columns, rows = reader.query_rows(sql, _params(request.since, request.until, request.tenants))
    visible = [c for c in columns if c not in HIDDEN_COLUMNS]
    dicts = [{c: _utc(r[c]) for c in visible} for r in rows_as_dicts(columns, rows)]
    return Report(request=request, columns=visible, rows=dicts)


def report(
    reader: Reader,
    kind: str,
    *,
    since: str | datetime = "7d",
    until: datetime | None = None,
    by: str | Sequence[str] | None = None,
    tenants: Sequence[str] = (),
    database: str = "aifleet",
) -> Report:
    """Convenience wrapper: ``report(reader, "cost", since="7d", by="tenant,provider")``."""
    now = datetime.now(UTC)
    start = parse_since(since, now=now) if isinstance(since, str) else since
    request = ReportRequest(kind, start, until or now, parse_by(by), tuple(tenants))
    return run_report(reader, request, database=database)


def tenant_spend_rows(reader: Reader, since: datetime, *, database: str = "aifleet") -> list[tuple[str, str, Decimal]]:
    """(tenant, tier of its latest event, spend) since ``since``: what budget alerting compares with budgets."""
    _, rows = reader.query_rows(load_sql("tenant_spend", database), {"since": _params(since, since)["since"]})
    return [(str(t), str(tier), Decimal(str(c))) for t, tier, c in rows]


def provider_window(
    reader: Reader, since: datetime, until: datetime, *, database: str = "aifleet"
) -> list[dict[str, Any]]:
    """Per-provider requests, errors, p95 latency and cost over ``[since, until)``."""
    columns, rows = reader.query_rows(load_sql("provider_window", database), _params(since, until))
    return rows_as_dicts(columns, rows)


def alert_history(reader: Reader, since: datetime, *, database: str = "aifleet") -> list[dict[str, Any]]:
    """Alert transitions stored since ``since`` (firing, escalated, resolved), oldest first."""
    columns, rows = reader.query_rows(load_sql("alert_history", database), {"since": _params(since, since)["since"]})
    return rows_as_dicts(columns, rows)


def latest_alerts(reader: Reader, since: datetime, *, database: str = "aifleet") -> list[Alert]:
    """The last stored transition of every alert since ``since`` (an alerting agent resumes from these)."""
    columns, rows = reader.query_rows(load_sql("alert_state", database), {"since": _params(since, since)["since"]})
    aware = [
        {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v for k, v in row.items()}
        for row in rows_as_dicts(columns, rows)
    ]
    return [Alert.model_validate(row) for row in aware]


# -- rendering ------------------------------------------------------------------------------


def _cell(value: Any, column: str) -> str:
    if isinstance(value, Decimal):
        return f"{value:.6f}" if "cost" in column else _money(value)
    if isinstance(value, float):
        return f"{value:.2%}" if column.endswith("_rate") else f"{value:,.1f}"
    if isinstance(value, datetime):
        return _utc(value).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _money(value: Decimal) -> str:
    """A decimal in fixed notation at its full scale: ``0.000000000``, never ``0E-9`` or a float."""
    return format(value, "f")


def _plain(value: Any) -> Any:
    """A CSV/JSON value: decimals (money) as fixed-notation strings, datetimes in UTC."""
    if isinstance(value, Decimal):
        return _money(value)
    return _utc(value)


def render_table(rep: Report) -> str:
    """A rich table, rendered to text."""
    from rich.console import Console
    from rich.table import Table

    r = rep.request
    table = Table(title=f"{r.kind} report {r.since:%Y-%m-%d %H:%M} .. {r.until:%Y-%m-%d %H:%M} UTC")
    for column in rep.columns:
        table.add_column(column, justify="left" if column in GROUP_COLUMNS else "right")
    for row in rep.rows:
        table.add_row(*(_cell(row[c], c) for c in rep.columns))
    buffer = io.StringIO()
    Console(file=buffer, width=200, force_terminal=False).print(table)
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    plain = _plain(value)
    return plain.isoformat() if isinstance(plain, datetime) else str(plain)


def render_csv(rep: Report) -> str:
    """CSV with a header row; money in fixed notation at full precision, times in UTC."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(rep.columns)
    for row in rep.rows:
        writer.writerow([_csv_value(row[c]) for c in rep.columns])
    return buffer.getvalue()


def render_json(rep: Report) -> str:
    """``{"kind", "since", "until", "by", "rows": [...]}``.

    Money (every ``Decimal`` column: ``cost_usd``, ``saved_cost_usd``, ``cost_per_request``) is a
    string in fixed notation at the column's full scale (``"0.020000000"``), so it stays exact: a
    JSON number would go through a float. Counts are integers, rates and latencies floats, times
    ISO 8601 in UTC.
    """
    r = rep.request
    doc = {
        "kind": r.kind,
        "since": r.since.isoformat(),
        "until": r.until.isoformat(),
        "by": list(r.by),
        "rows": [{c: _plain(row[c]) for c in rep.columns} for row in rep.rows],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC).decode()


def chart_data(reader: Reader, request: ReportRequest, *, database: str = "aifleet") -> dict[str, Any]:
    """What the HTML charts show: cost over time per provider, and latency percentiles per provider."""
    span = (request.until - request.since).total_seconds()
    bucket_s = 3600 if span <= 3 * 86400 else 86400
    params = _params(request.since, request.until, request.tenants) | {"bucket_s": bucket_s}
    _, rows = reader.query_rows(load_sql("cost_timeseries", database), params)
    series_rows = [tuple(_utc(v) for v in row) for row in rows]
    latency = run_report(
        reader,
        ReportRequest("latency", request.since, request.until, ("provider",), request.tenants),
        database=database,
    )
    return {"bucket_s": bucket_s, "cost_series": series_rows, "latency": latency.rows}


def render_html(rep: Report, charts: Mapping[str, Any]) -> str:
    """A self-contained HTML page: the report table plus inline SVG charts (no JavaScript)."""
    from streams.analytics.charts import grouped_bars, stacked_bars

    fmt = "%Y-%m-%d %H:%M" if charts["bucket_s"] < 86400 else "%Y-%m-%d"
    buckets = sorted({row[0] for row in charts["cost_series"]})
    providers = sorted({row[1] for row in charts["cost_series"]})
    index = {b: i for i, b in enumerate(buckets)}
    series = {p: [0.0] * len(buckets) for p in providers}
    by_provider = dict.fromkeys(providers, 0.0)
    for bucket, provider, cost in charts["cost_series"]:
        series[provider][index[bucket]] += float(cost)
        by_provider[provider] += float(cost)
    latency = charts["latency"]
    figures = [
        stacked_bars("Cost over time by provider (USD)", [_utc(b).strftime(fmt) for b in buckets], series),
        stacked_bars("Cost by provider (USD)", list(by_provider), {"cost": list(by_provider.values())}),
        grouped_bars(
            "Latency percentiles by provider",
            [str(r["provider"]) for r in latency],
            {q: [float(r[f"{q}_ms"]) for r in latency] for q in ("p50", "p95", "p99")},
        ),
    ]
    r = rep.request
    head = "".join(f"<th>{escape(c)}</th>" for c in rep.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_cell(row[c], c))}</td>" for c in rep.columns) + "</tr>" for row in rep.rows
    )
    title = f"aifleet {r.kind} report"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}figure{{margin:1.5em 0}}
figcaption{{font-weight:600;margin-bottom:.3em}}</style></head><body>
<h1>{escape(title)}</h1>
<p>{escape(r.since.isoformat())} to {escape(r.until.isoformat())}; by {escape(", ".join(r.by) or "(all)")}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{"".join(figures)}
</body></html>
"""


def render(rep: Report, fmt: str, reader: Reader | None = None, *, database: str = "aifleet") -> str:
    """Render a report in ``table``, ``csv``, ``json`` or ``html`` (html queries chart data)."""
    if fmt == "table":
        return render_table(rep)
    if fmt == "csv":
        return render_csv(rep)
    if fmt == "json":
        return render_json(rep)
    if fmt == "html":
        if reader is None:
            raise InvalidReportRequest("the html format needs a reader for its charts")
        return render_html(rep, chart_data(reader, rep.request, database=database))
    raise InvalidReportRequest(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
