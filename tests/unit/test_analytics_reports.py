"""Report parsing and rendering without a store: time zones, money in JSON/CSV, --since bounds."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest

from streams.analytics.errors import InvalidReportRequest
from streams.analytics.reports import Report, ReportRequest, chart_data, parse_since, render, run_report

NEW_YORK = timezone(timedelta(hours=-5), "EST")  # what chDB hands back under TZ=America/New_York
NOON_UTC = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class ZonedReader:
    """Answers like chDB in a process whose TZ is New York: the right instants, in New York time."""

    def query_rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        local = NOON_UTC.astimezone(NEW_YORK)
        if "cost_timeseries" in sql or "toStartOfInterval" in sql:
            return ["bucket", "provider", "cost_usd"], [(local.replace(hour=0) - timedelta(hours=5), "p1", Decimal(1))]
        if "quantilesExactInclusive" in sql:  # latency by provider, for the html charts
            return ["provider", "p50_ms", "p95_ms", "p99_ms"], [("p1", 1.0, 2.0, 3.0)]
        return ["hour", "requests", "cost_usd"], [(local, 1, Decimal("1.000000000"))]

    def close(self) -> None:
        pass


def test_report_times_are_utc_whatever_the_engines_session_time_zone() -> None:
    reader = ZonedReader()
    request = ReportRequest("cost", datetime(2026, 11, 15, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC), ("hour",))
    rep = run_report(reader, request)
    assert rep.rows[0]["hour"] == NOON_UTC and rep.rows[0]["hour"].utcoffset() == timedelta(0)
    assert "2026-11-20 12:00" in render(rep, "table")
    assert orjson.loads(render(rep, "json"))["rows"][0]["hour"] == "2026-11-20T12:00:00+00:00"
    assert render(rep, "csv").splitlines()[1].startswith("2026-11-20T12:00:00+00:00,")
    assert chart_data(reader, request)["cost_series"][0][0] == datetime(2026, 11, 20, tzinfo=UTC)
    html = render(rep, "html", reader)
    assert "<td>2026-11-20 12:00</td>" in html
    assert re.findall(r'text-anchor="middle">([0-9-: ]+)<', html) == ["2026-11-20"]  # the daily bucket label


def test_a_table_cell_of_an_aware_datetime_is_shown_in_utc() -> None:
    request = ReportRequest("cost", NOON_UTC - timedelta(days=1), NOON_UTC + timedelta(days=1), ("hour",))
    rep = Report(request, ["hour"], [{"hour": NOON_UTC.astimezone(NEW_YORK)}])
    assert "2026-11-20 12:00" in render(rep, "table") and "07:00" not in render(rep, "table")


def test_money_is_a_fixed_notation_string_in_json_and_csv() -> None:
    request = ReportRequest("cost", NOON_UTC - timedelta(days=1), NOON_UTC)
    total = Decimal("12345678.901234000")
    rows = [
        {"tenant": "t1", "requests": 1000, "cost_usd": total, "cost_per_request": Decimal("12345.678901234")},
        {"tenant": "t2", "requests": 1, "cost_usd": Decimal("0E-9"), "cost_per_request": Decimal("1E-9")},
    ]
    rep = Report(request, ["tenant", "requests", "cost_usd", "cost_per_request"], rows)
    doc = orjson.loads(render(rep, "json"))["rows"]
    assert doc[0] == {
        "tenant": "t1",
        "requests": 1000,
        "cost_usd": "12345678.901234000",
        "cost_per_request": "12345.678901234",
    }
    assert doc[1]["cost_usd"] == "0.000000000" and doc[1]["cost_per_request"] == "0.000000001"
    assert Decimal(doc[0]["cost_usd"]) == total
    lines = list(csv.reader(io.StringIO(render(rep, "csv"))))
    assert lines[1] == ["t1", "1000", "12345678.901234000", "12345.678901234"]
    assert lines[2] == ["t2", "1", "0.000000000", "0.000000001"]


@pytest.mark.parametrize(
    "text", ["3000000d", "100000w", "99999999999999999999999d", "1969-12-31", "0001-01-01T00:00+01:00"]
)
def test_since_out_of_range_is_a_report_error(text: str) -> None:
    with pytest.raises(InvalidReportRequest, match="1970-01-01"):
        parse_since(text, now=NOON_UTC)


def test_since_in_range_still_parses() -> None:
    assert parse_since("7d", now=NOON_UTC) == NOON_UTC - timedelta(days=7)
    assert parse_since("1970-01-01") == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_since("2026-11-20T07:00-05:00") == NOON_UTC
