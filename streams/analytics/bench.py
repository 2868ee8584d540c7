"""Benchmark: ingest rate through the sink and cost-report query time, on synthetic events."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from streams.analytics.client import ClientReader, create_client
from streams.analytics.migrate import RenderOptions, migrate
from streams.analytics.reports import ReportRequest, run_report
from streams.analytics.sink import UsageSink
from streams.analytics.synthetic import synthetic_events
from streams.settings import ClickHouseSettings


@dataclass
class BenchResult:
    """Measured figures of one bench run."""

    backend: str
    events: int
    batch_size: int
    ingest_seconds: float
    ingest_events_per_s: float
    replay_events: int
    replay_events_per_s: float
    stored_rows: int
    report_total_usd: str
    report_rows: int
    cost_report_ms: list[float]
    cost_report_median_ms: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def seed(
    sink: UsageSink,
    n: int,
    *,
    batch_size: int = 10_000,
    seed_value: int = 0,
    span: timedelta = timedelta(days=7),
    end: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Write ``n`` synthetic events through ``sink`` in batches; returns seconds spent in writes."""
    spent = 0.0
    batch = []
    for event in synthetic_events(n, seed=seed_value, span=span, end=end):
        batch.append(event)
        if len(batch) >= batch_size:
            started = time.perf_counter()
            sink.write_sync(batch)
            spent += time.perf_counter() - started
            if progress:
                progress(len(batch))
            batch = []
    if batch:
        started = time.perf_counter()
        sink.write_sync(batch)
        spent += time.perf_counter() - started
        if progress:
            progress(len(batch))
    return spent


def run_bench(
    settings: ClickHouseSettings,
    *,
    events: int = 1_000_000,
    batch_size: int = 10_000,
    report_runs: int = 3,
    data_path: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Migrate, ingest ``events`` synthetic events, replay 10 % of them, time the cost report."""
    client = create_client(settings, data_path=data_path)
    try:
        migrate(client, RenderOptions.from_settings(settings))
        sink = UsageSink(settings, client=client)
        end = datetime.now(UTC)
        ingest_s = seed(sink, events, batch_size=batch_size, end=end, progress=progress)
        replay_n = max(events // 10, 1)
        replay_s = seed(sink, replay_n, batch_size=batch_size, end=end)  # same seed: same event_ids
        db = settings.database
        stored = int(client.query(f"SELECT count() FROM {db}.usage_events FINAL").result_rows[0][0])  # noqa: S608
        reader = ClientReader(client, owns_client=False)
        request = ReportRequest(
            "cost", end - timedelta(days=8), end + timedelta(minutes=1), ("tenant", "provider", "model")
        )
        timings = []
        report = None
        for _ in range(report_runs):
            started = time.perf_counter()
            report = run_report(reader, request, database=db)
            timings.append((time.perf_counter() - started) * 1000)
        assert report is not None
        return BenchResult(
            backend=settings.backend,
            events=events,
            batch_size=batch_size,
            ingest_seconds=round(ingest_s, 3),
            ingest_events_per_s=round(events / ingest_s, 1),
            replay_events=replay_n,
            replay_events_per_s=round(replay_n / replay_s, 1),
            stored_rows=stored,
            report_total_usd=str(report.total("cost_usd")),
            report_rows=len(report.rows),
            cost_report_ms=[round(t, 1) for t in timings],
            cost_report_median_ms=round(statistics.median(timings), 1),
        )
    finally:
        client.close()
