"""The usage sink: batches of ``UsageEvent`` in, rows in ClickHouse out, never twice.

The Kafka agent forms size- and time-bounded batches and awaits ``UsageSink.write(events)``. On
success the batch is durable and the agent commits its offsets. When ClickHouse is down or
overloaded, ``write`` raises ``AnalyticsUnavailable`` / ``AnalyticsBackpressure`` (both
``retryable``): the agent must not commit, and retries the same batch later.

Events older than the usage TTL (``ClickHouseSettings.ttl_days``) are not stored: the table
would drop them on insert anyway, and its duplicate look-up could then never find them, so every
replay would add them to the rollups again.

Replays are safe twice over: the sink drops events whose ``event_id`` is already stored before
inserting (so the rollup materialized views do not double count), and the base table is a
``ReplacingMergeTree`` keyed by ``event_id`` that reports read with ``FINAL`` (so even a race
between two writers cannot inflate a report).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.alert import Alert
from schemas.usage import UsageEvent
from streams.analytics.client import check_identifier, create_client, resolve_data_path, translate_error
from streams.settings import ClickHouseSettings

if TYPE_CHECKING:
    from streams.analytics.endpoint import QueryEndpoint

USAGE_COLUMNS = (
    "event_id",
    "request_id",
    "tenant",
    "tier",
    "kind",
    "provider",
    "model",
    "status",
    "error_reason",
    "attempt",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_cost_usd",
    "latency_ms",
    "streamed",
    "route_reason",
    "region",
    "worker",
    "ts",
)
ALERT_COLUMNS = (
    "alert_id",
    "rule",
    "subject",
    "severity",
    "status",
    "value",
    "threshold",
    "message",
    "started_at",
    "ts",
)
LOOKUP_CHUNK = 10_000
# Events this close to the TTL are dropped too: the store's clock and ours may differ a little.
TTL_MARGIN = timedelta(hours=1)
log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    """Running counters of one sink."""

    batches: int = 0
    inserted: int = 0
    duplicates: int = 0
    expired: int = 0  # older than the usage TTL: not stored (see ``UsageSink.write_sync``)
    insert_seconds: float = 0.0


def usage_columns(events: Iterable[UsageEvent]) -> list[list[Any]]:
    """Column-oriented insert data for ``USAGE_COLUMNS`` (None becomes '' for LowCardinality)."""
    rows = list(events)
    return [
        [e.event_id for e in rows],
        [e.request_id for e in rows],
        [e.tenant for e in rows],
        [e.tier or "" for e in rows],
        [e.kind for e in rows],
        [e.provider for e in rows],
        [e.model for e in rows],
        [e.status for e in rows],
        [e.error_reason.value if e.error_reason else "" for e in rows],
        [e.attempt for e in rows],
        [e.input_tokens for e in rows],
        [e.output_tokens for e in rows],
        [e.cost_usd for e in rows],
        [e.saved_cost_usd for e in rows],
        [e.latency_ms for e in rows],
        [e.streamed for e in rows],
        [e.route_reason or "" for e in rows],
        [e.region or "" for e in rows],
        [e.worker or "" for e in rows],
        [_utc(e.ts) for e in rows],
    ]


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class UsageSink:
    """Writes usage events (and alerts) to the analytics store. One per process.

    ``client`` may be passed in (tests, a shared chDB engine); otherwise it is opened from
    ``settings`` on first use and reopened after a connection failure.
    """

    def __init__(
        self,
        settings: ClickHouseSettings,
        *,
        client: Any | None = None,
        home: Path | None = None,
        dedup_lookup: bool = True,
    ) -> None:
        self.settings = settings
        self.database = check_identifier(settings.database, "database name")
        self.home = home
        self.dedup_lookup = dedup_lookup
        self.stats = SinkStats()
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------

    def client(self) -> Any:
        """The open client, opening it if needed (raises ``AnalyticsUnavailable``)."""
        if self._client is None:
            self._client = create_client(self.settings, home=self.home)
        return self._client

    def _drop_client(self) -> None:
        if self._owns_client and self._client is not None and self.settings.backend == "http":
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        """Close the client if the sink opened it."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    # -- writes -----------------------------------------------------------------------------

    async def write(self, events: list[UsageEvent], prompts: Mapping[str, str] | None = None) -> None:
        """Store one batch; returns once it is durable. Idempotent: replays are dropped.

        Prompts (the ``prompt`` the workers put on an event when ``store_prompts`` is set, and ``prompts``:
        request_id -> text) are stored in the prompts table only when ``settings.store_prompts`` is true.
        Raises ``AnalyticsUnavailable`` (or its subclass ``AnalyticsBackpressure``) when the store
        cannot take the batch: do not commit offsets, retry the batch.
        """
        if not events:
            return
        await asyncio.to_thread(self.write_sync, events, prompts)

    def write_sync(self, events: list[UsageEvent], prompts: Mapping[str, str] | None = None) -> int:
        """Blocking ``write``; returns how many events were new.

        ``rejected`` events (a request that ended without any provider call) are not stored: they are not
        attempts, and exist only to release a budget reservation. Events older than the usage TTL
        (``settings.ttl_days``, less ``TTL_MARGIN``) are dropped and counted in ``stats.expired``: the table
        drops such rows on insert, so the duplicate look-up never finds them, yet the materialized views
        would add them to the rollups on every replay.
        """
        unique: dict[str, UsageEvent] = {}
        horizon = datetime.now(UTC) - timedelta(days=self.settings.ttl_days) + TTL_MARGIN
        expired = 0
        for event in events:
            if event.status == "rejected":
                continue  # no call was made: it only releases a budget hold in the quota ledger
            if _utc(event.ts) < horizon:
                expired += 1
            else:
                unique[event.event_id] = event
        if expired:
            log.warning("dropped %d usage events older than the %d-day usage TTL", expired, self.settings.ttl_days)
        with self._lock:
            started = time.perf_counter()
            try:
                client = self.client()
                fresh = self._drop_stored(client, unique) if self.dedup_lookup else list(unique.values())
                if fresh:
                    client.insert(
                        f"{self.database}.usage_events",
                        usage_columns(fresh),
                        column_names=USAGE_COLUMNS,
                        column_oriented=True,
                    )
                if self.settings.store_prompts:
                    # every event of the batch, not only the fresh ones: a retry after the usage insert went
                    # through must still store them (the prompts table replaces rows by request id)
                    carried = {e.request_id: e.prompt for e in unique.values() if e.prompt is not None}
                    self._insert_prompts(client, list(unique.values()), {**carried, **(prompts or {})})
            except Exception as exc:
                self._drop_client()
                raise translate_error(exc, f"usage insert of {len(unique)} events failed") from exc
            self.stats.batches += 1
            self.stats.inserted += len(fresh)
            self.stats.duplicates += len(events) - expired - len(fresh)
            self.stats.expired += expired
            self.stats.insert_seconds += time.perf_counter() - started
        return len(fresh)

    def _drop_stored(self, client: Any, unique: dict[str, UsageEvent]) -> list[UsageEvent]:
        ids = list(unique)
        stored: set[str] = set()
        for i in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[i : i + LOOKUP_CHUNK]
            result = client.query(
                f"SELECT event_id FROM {self.database}.usage_events WHERE event_id IN {{ids:Array(String)}}",  # noqa: S608
                parameters={"ids": chunk},
            )
            stored.update(row[0] for row in result.result_rows)
        return [e for k, e in unique.items() if k not in stored]

    def _insert_prompts(self, client: Any, events: list[UsageEvent], prompts: Mapping[str, str]) -> None:
        by_request = {e.request_id: e for e in events}
        rows = [
            [rid, by_request[rid].tenant, text, _utc(by_request[rid].ts)]
            for rid, text in prompts.items()
            if rid in by_request
        ]
        if rows:
            client.insert(f"{self.database}.prompts", rows, column_names=["request_id", "tenant", "prompt", "ts"])

    async def write_alerts(self, alerts: list[Alert]) -> None:
        """Store alert state changes (idempotent: the sorting key is the transition)."""
        if not alerts:
            return
        await asyncio.to_thread(self.write_alerts_sync, alerts)

    def write_alerts_sync(self, alerts: list[Alert]) -> None:
        """Blocking ``write_alerts``."""
        rows = [
            [
                a.alert_id,
                a.rule,
                a.subject,
                a.severity,
                a.status,
                a.value,
                a.threshold,
                a.message,
                _utc(a.started_at),
                _utc(a.ts),
            ]
            for a in alerts
        ]
        with self._lock:
            try:
                self.client().insert(f"{self.database}.alerts", rows, column_names=ALERT_COLUMNS)
            except Exception as exc:
                self._drop_client()
                raise translate_error(exc, f"alert insert of {len(rows)} alerts failed") from exc

    # -- embedded mode ----------------------------------------------------------------------

    async def start_query_endpoint(self, port: int = 0) -> QueryEndpoint | None:
        """In chDB mode, serve read-only queries to other processes on 127.0.0.1 (None over HTTP).

        The endpoint advertises itself in ``<data_path>/aifleet-query-endpoint.json``, which
        ``streams.analytics.client.open_reader`` finds. Stop it with ``await endpoint.stop()``.
        """
        if self.settings.backend != "chdb":
            return None
        from streams.analytics.endpoint import QueryEndpoint

        self.client()  # the engine must be open in this process before readers arrive
        endpoint = QueryEndpoint(self.settings, resolve_data_path(self.settings, self.home), port=port)
        await endpoint.start()
        return endpoint
