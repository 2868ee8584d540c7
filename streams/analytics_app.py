"""The analytics process: the usage sink into ClickHouse and the alerting agents.

It is its own Faust app (and consumer group) because in embedded mode chDB admits one process
per data path: this process owns the store, writes it, and serves read-only queries to reports
over a loopback endpoint. Against a ClickHouse server several of them can run side by side.

Delivery into ClickHouse is at-least-once (``streams.analytics.usage_consumer``): a batch's offsets
are committed only after the insert succeeded; while ClickHouse is down the consumer keeps retrying
the same batch and commits nothing. Rows are idempotent by ``event_id``, so a replay never
double-counts. Alert evaluation runs on the leader of this app's consumer group.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import faust

from schemas.alert import Alert
from schemas.dead_letter import DeadLetter
from streams.analytics.alerting import AlertLoop, AlertSource
from streams.analytics.alerts import AlertEngine, AlertRules, Escalation, UsageWindow
from streams.analytics.client import ClientReader, create_client
from streams.analytics.errors import AnalyticsError, AnalyticsUnavailable, RebuildError
from streams.analytics.migrate import RenderOptions, migrate
from streams.analytics.rebuild import adopt_offsets
from streams.analytics.sink import UsageSink
from streams.analytics.usage_consumer import UsageConsumer
from streams.app import FaustPublisher, new_faust_app
from streams.catalog import cached_catalog
from streams.health_feed import follow_health
from streams.kafka_auth import aiokafka_options, librdkafka_config
from streams.publisher import publish_all
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)
WEBHOOK_QUEUE = 10_000  # alerts waiting for the webhook at most; beyond, they are only on the topic and table
UNSTORED_MAX = 10_000  # alerts waiting for the alerts table at most; beyond, the oldest are only on the topic


def alert_rules(settings: Settings) -> AlertRules:
    a = settings.analytics
    return AlertRules(
        min_requests=a.alert_min_requests,
        escalation=Escalation(
            warn_after=timedelta(seconds=a.alert_warn_after_s),
            critical_after=timedelta(seconds=a.alert_critical_after_s),
            cooldown=timedelta(seconds=a.alert_cooldown_s),
        ),
    )


def alert_source(settings: Settings) -> AlertSource:
    """Where the rate rules read from: ``auto`` is the stream on chDB (one process), the store on a server."""
    source = settings.analytics.alert_source
    if source == "auto":
        return "stream" if settings.clickhouse.backend == "chdb" else "store"
    return source


def build_analytics_app(settings: Settings) -> faust.App:
    """Usage sink, alert window feeds and the periodic alert evaluation."""
    topics = Topics.from_settings(settings)
    a = settings.analytics
    app = new_faust_app(
        settings,
        settings.analytics_group,
        topic_disable_leader=False,  # one analytics process (the holder of the leader topic) evaluates alerts
    )
    publisher = FaustPublisher(app)
    sink = UsageSink(settings.clickhouse, home=settings.home)
    window = UsageWindow(timedelta(seconds=a.alert_window_s))
    health_known = asyncio.Event()  # set once the health feed has replayed its look-back
    loop = AlertLoop(
        AlertEngine(alert_rules(settings)),
        window,
        open_reader=lambda: ClientReader(create_client(settings.clickhouse, home=settings.home)),
        catalog=cached_catalog(settings.config_file),
        source=alert_source(settings),
        budget_every_s=a.alert_budget_every_s,
        database=settings.clickhouse.database,
        health_ready=health_known.is_set,
    )
    store_ready = asyncio.Event()  # set once the migrations are applied: the usage sink writes after that
    unstored: list[Alert] = []  # transitions the alerts table has not taken yet: retried with the next ones
    endpoint: list[Any] = []
    webhook_queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=WEBHOOK_QUEUE)

    @app.task
    async def open_store() -> None:
        """Apply migrations, then (embedded mode) serve read-only queries to other processes."""
        while True:
            try:
                applied = migrate(sink.client(), RenderOptions.from_settings(settings.clickhouse))
                if applied:
                    log.warning("analytics migrations applied: %s", applied)
                break
            except AnalyticsUnavailable:
                log.warning("ClickHouse unavailable for migrations; retrying", exc_info=True)
                await asyncio.sleep(a.retry_backoff_s)
        store_ready.set()
        ep = await sink.start_query_endpoint(port=a.query_port)
        if ep is not None:
            endpoint.append(ep)

    @app.task
    async def usage_sink() -> None:
        """Usage events into ClickHouse in batches, once the store is migrated (``UsageConsumer``)."""
        await store_ready.wait()
        try:  # upgrading from the Faust-agent sink: start where it left off, not from the topic's start
            adopted = await asyncio.to_thread(
                adopt_offsets,
                settings.kafka_servers,
                source_group=settings.analytics_group,
                group=settings.usage_sink_group,
                topic=topics.usage,
                client_config=librdkafka_config(settings),
            )
            if adopted:
                log.warning("usage sink adopted the offsets of %s: %s", settings.analytics_group, adopted)
        except RebuildError as exc:
            log.warning("usage sink starts from its own offsets (%s)", exc)

        async def publish_dead_letters(letters: list[DeadLetter]) -> None:
            await publish_all(publisher, [(topics.dlq, letter, None) for letter in letters])

        consumer = UsageConsumer(
            bootstrap=settings.kafka_servers,
            topic=topics.usage,
            group=settings.usage_sink_group,
            sink=sink,
            publish_dead_letters=publish_dead_letters,
            on_events=window.add_all,
            batch_size=a.batch_size,
            within_s=a.batch_within_s,
            retry_backoff_s=a.retry_backoff_s,
            max_payload=settings.worker.dlq_max_payload_bytes,
            kafka_options=aiokafka_options(settings),
        )
        await consumer.run()

    @app.task
    async def alert_health() -> None:
        """Every analytics process follows the whole health topic (no consumer group): the evaluator,
        whichever it is, must know every provider's circuit."""
        await follow_health(
            window.add_health,
            bootstrap=settings.kafka_servers,
            topic=topics.health,
            lookback_s=a.alert_window_s + settings.resilience.breaker_recovery_s,
            kafka_options=aiokafka_options(settings),
            caught_up=health_known.set,
        )

    @app.timer(interval=a.alert_every_s)
    async def evaluate_alerts() -> None:
        try:
            alerts = await loop.step(leader=app.is_leader())
        except AnalyticsError as exc:
            log.warning("alert evaluation skipped: %s", exc)
            return
        if alerts:
            await publish_all(publisher, [(topics.alerts, alert, alert.alert_id) for alert in alerts])
        if not alerts and not unstored:
            return
        pending = [*unstored, *alerts]
        try:
            await sink.write_alerts(pending)
            unstored.clear()
        except AnalyticsUnavailable:
            unstored[:] = pending[-UNSTORED_MAX:]
            log.warning("could not store %d alerts in ClickHouse yet; they are on the alerts topic", len(pending))
        if a.webhook_url is not None:
            for alert in alerts:
                try:
                    webhook_queue.put_nowait(alert)
                except asyncio.QueueFull:
                    log.warning("webhook queue full; %s is only on the alerts topic and in ClickHouse", alert.alert_id)

    @app.task
    async def deliver_webhooks() -> None:
        """Post alerts to the webhook in order, off the evaluation timer: a slow or failing receiver
        (retries with backoff) never delays evaluation or the alerts topic and table."""
        if a.webhook_url is None:
            return
        from streams.analytics.webhook import SlackWebhook

        async with SlackWebhook(a.webhook_url.get_secret_value()) as hook:
            while True:
                alert = await webhook_queue.get()
                try:
                    await hook.send(alert)
                except Exception:  # noqa: BLE001 - the webhook gave up after its retries
                    log.warning("webhook delivery failed for %s", alert.alert_id)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close(_app: Any, **_: Any) -> None:
        for ep in endpoint:
            await ep.stop()
        loop.close()
        sink.close()

    return app
