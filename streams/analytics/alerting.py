"""One evaluation step of the alerting agent: who evaluates, what it resumes from, what it reads.

``AlertEngine`` is pure; this wraps it for a process that may restart and may run beside others:

* **One evaluator.** Against a ClickHouse server several analytics processes can share the usage
  topic's partitions. Only the leader of their consumer group evaluates (the caller passes
  ``app.is_leader()``), so each transition is emitted once, not once per process.
* **State outlives the process.** When a process becomes the evaluator (at start, or when the
  previous leader left) it resumes from each alert's last stored transition (``latest_alerts``): a
  firing alert is not fired again, and is resolved when its condition cleared meanwhile; a recent
  resolution keeps its cooldown. If the store cannot be read, nothing is evaluated until it can:
  evaluating without that state would repeat or strand alerts.
* **Complete inputs.** ``source="stream"`` judges the rates from this process's window of the usage
  topic, which holds every event only when it is the sole analytics process (chDB's case).
  ``source="store"`` reads them from the usage table, which every process writes. Health comes from
  the health topic, which every process follows in full (``follow_health``).
* **Budgets.** Month-to-date spend per tenant is read from the usage table every ``budget_every_s``
  and compared with the catalog's monthly budgets (the tenant's own, else its tier's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, TypeVar

from schemas.alert import Alert
from schemas.request import Tier
from streams.analytics.alerts import AlertEngine, Snapshot, UsageWindow, snapshot_from_store
from streams.analytics.client import Reader
from streams.analytics.errors import AnalyticsUnavailable
from streams.analytics.reports import latest_alerts, tenant_spend_rows
from streams.catalog import TIER_ORDER, Catalog
from streams.routing.quota import month_start

log = logging.getLogger(__name__)
T = TypeVar("T")
AlertSource = Literal["stream", "store"]
SINCE_EVER = datetime(1970, 1, 1, tzinfo=UTC)  # the alerts table is small: resume from all of it


def budget_inputs(
    rows: Iterable[tuple[str, str, Decimal]], catalog: Catalog
) -> tuple[dict[str, float], dict[str, float]]:
    """(spend, budget) per tenant with a budget, from ``tenant_spend_rows`` and the catalog.

    The tier is the tenant's configured one; an unlisted tenant's events carry the tier it was served
    at, which (like the gate) may lower its default tier but never raise it.
    """
    spend: dict[str, float] = {}
    budgets: dict[str, float] = {}
    for tenant, tier, cost in rows:
        hint: Tier | None = tier if tier in TIER_ORDER else None  # type: ignore[assignment]
        budget = catalog.monthly_budget_of(tenant, catalog.tier_of(tenant, hint))
        if budget is not None and budget > 0:
            spend[tenant] = float(cost)
            budgets[tenant] = budget
    return spend, budgets


class AlertLoop:
    """Leadership, resumption, inputs and evaluation; the caller publishes what ``step`` returns."""

    def __init__(
        self,
        engine: AlertEngine,
        window: UsageWindow,
        *,
        open_reader: Callable[[], Reader],
        catalog: Catalog,
        source: AlertSource = "stream",
        budget_every_s: float = 60.0,
        database: str = "aifleet",
        monotonic: Callable[[], float] = time.monotonic,
        health_ready: Callable[[], bool] = lambda: True,
        health_wait_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self.window = window
        self.catalog = catalog
        self.source = source
        self.budget_every_s = budget_every_s
        self.database = database
        self._open_reader = open_reader
        self._monotonic = monotonic
        self._reader: Reader | None = None
        self._resumed = False
        self._resumed_at = 0.0
        self._health_ready = health_ready
        self.health_wait_s = health_wait_s
        self._spend: dict[str, float] = {}
        self._budgets: dict[str, float] = {}
        self._budgets_read_at: float | None = None

    async def step(self, *, leader: bool) -> list[Alert]:
        """One evaluation: the transitions to publish (none when not the leader or the store is away).

        Raises ``AnalyticsUnavailable`` when the store is needed (to resume, or as the snapshot's source)
        and cannot be read; the next step tries again.
        """
        if not leader:
            if self._resumed:  # leadership moved: the new leader resumes from the store, and so do we if it returns
                self.engine = AlertEngine(self.engine.rules, clock=self.engine.clock)
                self._resumed = False
            return []
        if not self._resumed:
            last = await self._read(lambda r: latest_alerts(r, SINCE_EVER, database=self.database))
            restored = self.engine.restore(last)
            self._resumed = True
            self._resumed_at = self._monotonic()
            log.info("alerting resumed from the store: %d firing or cooling-down alerts", restored)
        if not self._health_ready() and self._monotonic() - self._resumed_at < self.health_wait_s:
            # the circuits are not known yet (the health feed is replaying its look-back): judging now
            # would resolve every provider_unhealthy alert just resumed
            return []
        await self._refresh_budgets()
        return self.engine.evaluate(await self._snapshot())

    async def _snapshot(self) -> Snapshot:
        if self.source == "stream":
            # a resumed evaluator's window starts empty: for one window, too few calls resolve nothing
            warming = self._monotonic() - self._resumed_at < self.window.window.total_seconds()
            return self.window.snapshot(spend_usd=self._spend, budgets_usd=self._budgets, warming=warming)
        now = self.engine.clock()
        unhealthy = self.window.unhealthy()
        return await self._read(
            lambda r: snapshot_from_store(
                r,
                now=now,
                window=self.window.window,
                spend_usd=self._spend,
                budgets_usd=self._budgets,
                unhealthy=unhealthy,
                database=self.database,
            )
        )

    async def _refresh_budgets(self) -> None:
        at = self._monotonic()
        if self._budgets_read_at is not None and at - self._budgets_read_at < self.budget_every_s:
            return
        since = month_start(self.engine.clock())
        try:
            rows = await self._read(lambda r: tenant_spend_rows(r, since, database=self.database))
        except AnalyticsUnavailable:
            log.warning("could not read tenant spend; budget alerts use the last figures until it can")
            return
        self._spend, self._budgets = budget_inputs(rows, self.catalog)
        self._budgets_read_at = at

    async def _read(self, query: Callable[[Reader], T]) -> T:
        """Run ``query`` off the event loop; a failed reader is closed and reopened on the next read."""

        def run() -> T:
            if self._reader is None:
                self._reader = self._open_reader()
            try:
                return query(self._reader)
            except AnalyticsUnavailable:
                self.close()
                raise

        return await asyncio.to_thread(run)

    def close(self) -> None:
        """Close the reader (the loop reopens one when it next reads)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except Exception:
                log.debug("closing the alert reader failed", exc_info=True)


__all__ = ["AlertLoop", "AlertSource", "budget_inputs"]
