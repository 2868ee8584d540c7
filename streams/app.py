"""The Faust application: topics, agents and the collaborators they share, built from settings."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, cast

import faust
from pydantic import ValidationError

from schemas.base import Event
from schemas.cache import CachePurge
from schemas.usage import UsageEvent
from streams import faust_tuning, recovery_watch
from streams.agents.dispatch import DispatchStage
from streams.agents.gate import GateStage, Record
from streams.agents.infer import InferStage
from streams.cache.semantic import SemanticIndex
from streams.cache.stage import CacheStage
from streams.cache.store import CacheStore, TableCacheStore
from streams.catalog import Catalog, cached_catalog
from streams.errors import ConfigError
from streams.health_feed import HealthPublisher, apply_to_board, follow_health
from streams.kafka_auth import aiokafka_options, faust_credentials
from streams.providers.base import Provider
from streams.providers.local import shared_embedder
from streams.providers.registry import UnknownAdapter, build_provider
from streams.rejects import TopicDirectory, crash_handler, read_routed
from streams.resilience.caller import ResilientCaller
from streams.resilience.circuit_breaker import BreakerBoard
from streams.resilience.limits import provider_share
from streams.resilience.retry import RetryPolicy
from streams.resilience.token_bucket import ProviderLimiter
from streams.routing.policy import CostAwareRouter
from streams.routing.quota import QuotaLedger
from streams.settings import Settings
from streams.topics import Topics
from streams.windowed import process_windowed

log = logging.getLogger(__name__)


class FaustPublisher:
    """Publishes events through the app's producer, at once (never held back for the next commit).

    It talks to faust's transport producer directly: the records are bytes already, so faust's
    per-topic codec and channel machinery would only add cost on the hot path.
    """

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def publish(
        self, topic: str, event: Event, *, key: str | None = None, partition: int | None = None
    ) -> Awaitable[object]:
        return await self.publish_raw(topic, event.to_json(), key=key, partition=partition)

    async def publish_raw(
        self, topic: str, value: bytes, *, key: str | None = None, partition: int | None = None
    ) -> Awaitable[object]:
        return await self._app.producer.send(
            topic, key.encode() if key else None, value, partition=partition, timestamp=None, headers=None
        )


def catalog_for(settings: Settings) -> Catalog:
    """The provider catalog, pointed at the emulator when ``provider_base_url`` is set."""
    catalog = cached_catalog(settings.config_file)
    if settings.provider_base_url:
        catalog = catalog.with_base_url_override(settings.provider_base_url)
    return catalog


def build_providers(catalog: Catalog, settings: Settings) -> dict[str, Provider]:
    """One adapter per catalog provider; a provider whose adapter this build lacks is left out, loudly."""
    out: dict[str, Provider] = {}
    for name, spec in catalog.providers.items():
        try:
            out[name] = build_provider(name, spec, settings.keys)
        except UnknownAdapter:
            log.warning("provider %s needs adapter %r, which this build does not have; skipped", name, spec.adapter)
    return out


def build_caller(
    providers: dict[str, Provider], catalog: Catalog, settings: Settings, board: BreakerBoard
) -> tuple[ResilientCaller, dict[str, ProviderLimiter]]:
    """The resilient caller and this worker's rate-limit share per provider (resized on rebalance)."""
    r = settings.resilience
    limiters = {
        name: ProviderLimiter(name, rpm=spec.rpm, tpm=spec.tpm, burst=spec.burst, margin_s=r.limiter_margin_s)
        for name, spec in catalog.providers.items()
        if name in providers
    }
    policy = RetryPolicy(
        max_attempts=r.retry_attempts, base_delay_s=r.retry_base_delay_s, max_delay_s=r.retry_max_delay_s
    )
    caller = ResilientCaller(
        providers,
        board,
        limiters,
        policy=policy,
        limiter_wait_s=r.limiter_wait_s,
        fallback_reserve=r.fallback_reserve,
        timeout_blame_s=r.timeout_blame_s,
    )
    return caller, limiters


def resize_limits(limiters: dict[str, ProviderLimiter], catalog: Catalog, partitions: int, owned: set[int]) -> None:
    """Give this worker the share of each provider's limits that its routed partitions own.

    Shares are split per partition, so whatever the assignment, the workers' shares sum to at
    most the provider's limit: the cluster never exceeds it.
    """
    for name, limiter in limiters.items():
        share = provider_share(catalog.providers[name], partitions, owned)
        limiter.resize(rpm=share.rpm, tpm=share.tpm, burst=share.burst)


class _TableState(MutableMapping[str, Any]):
    """The quota ledger's state in a changelog-backed Faust table (one record per tenant)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def __getitem__(self, key: str) -> Any:
        value = self._table[key]
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        value = self._table.get(key)
        return default if value is None else value

    def __setitem__(self, key: str, value: Any) -> None:
        self._table[key] = value

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def limiter_load(limiter: ProviderLimiter) -> float:
    """How much of this worker's share of a provider's rpm and tpm the last minute used (0..1+)."""
    return max(
        limiter.requests.granted_in_window() / limiter.requests.limit,
        limiter.tokens.granted_in_window() / limiter.tokens.limit,
    )


def _usage_or_none(raw: bytes | None) -> UsageEvent | None:
    try:
        return UsageEvent.from_json(raw or b"")
    except (ValidationError, ValueError):
        log.warning("skipping a usage record that is not a UsageEvent")
        return None


QUOTA_TABLE = "quota"
CACHE_TABLE = "cache"


def changelog_topics(settings: Settings) -> list[str]:
    """The pipeline's table changelogs (compacted, co-partitioned with the requests topic)."""
    tables = [QUOTA_TABLE, CACHE_TABLE] if settings.cache.backend == "table" else [QUOTA_TABLE]
    return [f"{settings.pipeline_group}-{t}-changelog" for t in tables]


def build_cache(
    app: faust.App, settings: Settings, catalog: Catalog, topics: Topics, publisher: FaustPublisher, wid: str
) -> CacheStage | None:
    """The cache stage over the configured backend (None when caching is off)."""
    cfg = settings.cache
    if not cfg.enabled:
        return None
    store: CacheStore
    if cfg.backend == "redis":
        from streams.cache.redis_store import RedisCacheStore

        store = RedisCacheStore.from_url(cfg.redis_url.get_secret_value(), prefix=cfg.redis_prefix)
    else:
        if catalog.cache_scopes:
            raise ConfigError(
                "shared cache scopes need the redis cache backend (AIFLEET_CACHE__BACKEND=redis): "
                "the table backend keeps each tenant's entries on its own partition"
            )
        table = app.Table(
            CACHE_TABLE,
            default=None,
            partitions=settings.kafka.partitions,
            schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
            store=cfg.table_store,
        )
        store = TableCacheStore(_TableState(table))

    async def embed(texts: list[str]) -> Any:
        return await shared_embedder().embed_async(texts)

    return CacheStage(
        store=store,
        catalog=catalog,
        topics=topics,
        publisher=publisher,
        settings=cfg,
        index=SemanticIndex(threshold=cfg.semantic_threshold, max_per_namespace=cfg.semantic_max_per_scope),
        embed=embed,
        worker_id=wid,
    )


def worker_id() -> str:
    return os.environ.get("AIFLEET_WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"


def new_faust_app(settings: Settings, app_id: str, **overrides: Any) -> faust.App:
    """A Faust app on the deployment's cluster with aifleet's transport settings (both apps share them)."""
    faust_tuning.apply(settings.worker.fetch_max_wait_ms, settings.worker.fetch_min_bytes)
    bootstrap = settings.kafka_servers
    conf: dict[str, Any] = {
        "broker": [f"kafka://{h}" for h in bootstrap.split(",")],
        "value_serializer": "raw",
        "key_serializer": "raw",
        "topic_partitions": settings.kafka.partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        "broker_commit_interval": settings.worker.commit_interval_s,
        "broker_session_timeout": settings.worker.session_timeout_s,
        "broker_heartbeat_interval": settings.worker.heartbeat_interval_s,
        "producer_linger_ms": settings.worker.producer_linger_ms,
        "producer_max_request_size": 16 * 1024 * 1024,
        "consumer_max_fetch_size": 16 * 1024 * 1024,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": False,
        "store": "memory://",
        "topic_disable_leader": True,
        "broker_credentials": faust_credentials(settings),
    }
    conf.update(overrides)
    if "datadir" not in overrides:  # faust's default is "<app id>-data" in the working directory: use home
        datadir = settings.home / "faust-data" / app_id
        datadir.parent.mkdir(parents=True, exist_ok=True)  # faust creates the last level only
        conf["datadir"] = str(datadir)
    return faust.App(app_id, **conf)


def broker_topics(app: faust.App) -> Callable[[], Awaitable[set[str]]]:
    """The topics the broker has, from a metadata fetch on the app's producer connection."""

    async def fetch() -> set[str]:
        client = cast(Any, app.producer)._ensure_producer().client  # the started aiokafka producer's client
        cluster = await client.fetch_all_metadata()
        return set(cluster.topics())

    return fetch


def raw_topic(app: faust.App, name: str, settings: Settings) -> Any:
    """A topic of raw bytes (keys and values), with the deployment's partition count."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
        partitions=settings.kafka.partitions,
    )


def build_app(settings: Settings) -> faust.App:
    """The whole worker: gate and dispatch agents over the deployment's topics."""
    topics = Topics.from_settings(settings)
    bootstrap = settings.kafka_servers
    datadir = settings.home / "worker-data" / worker_id()
    datadir.mkdir(parents=True, exist_ok=True)
    app = new_faust_app(
        settings,
        settings.pipeline_group,
        stream_buffer_maxsize=max(4096, settings.worker.max_in_flight * 4),
        web_enabled=settings.worker.web_port is not None,
        web_port=settings.worker.web_port or 6066,
        web_host="127.0.0.1",
        store=settings.worker.table_store,
        datadir=str(datadir),  # RocksDB table stores: one directory per worker
    )
    publisher = FaustPublisher(app)
    catalog = catalog_for(settings)
    router = CostAwareRouter(catalog, default_tier=settings.default_tier)
    quota_table = app.Table(
        QUOTA_TABLE,
        default=None,
        partitions=settings.kafka.partitions,
        schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
    )
    ledger = QuotaLedger(catalog, state=_TableState(quota_table))
    # re-seeks a changelog partition whose restore stalls (docs/operations.md, "A worker stuck restoring a table")
    recovery_watch.install(
        app, stall_after_s=settings.worker.recovery_stall_s, max_reseeks=settings.worker.recovery_max_reseeks
    )
    wid = worker_id()
    providers = build_providers(catalog, settings)
    board = BreakerBoard(
        failure_threshold=settings.resilience.breaker_failures,
        recovery_timeout_s=settings.resilience.breaker_recovery_s,
        on_transition=HealthPublisher(publisher, topics.health),
        worker=wid,
    )
    caller, limiters = build_caller(providers, catalog, settings, board)

    def available(provider: str) -> bool:
        return provider in providers and board[provider].state != "open"

    def load(provider: str) -> float:
        limiter = limiters.get(provider)
        return limiter_load(limiter) if limiter is not None else 0.0

    cache = build_cache(app, settings, catalog, topics, publisher, wid)
    reply_topics = TopicDirectory(broker_topics(app), always=topics.all())
    gate = GateStage(
        topics=topics,
        router=router,
        ledger=ledger,
        available=available,
        load=load,
        publisher=publisher,
        max_request_bytes=settings.worker.max_request_bytes,
        dlq_max_payload_bytes=settings.worker.dlq_max_payload_bytes,
        default_tier=settings.default_tier,
        cache=cache,
        reply_exists=reply_topics.exists,
        partitions=settings.kafka.partitions,
    )
    store_prompts = settings.clickhouse.store_prompts  # prompts travel on usage events only when an operator opts in
    dispatch = DispatchStage(
        topics=topics, router=router, caller=caller, publisher=publisher, worker_id=wid, store_prompts=store_prompts
    )

    for name in topics.all():
        raw_topic(app, name, settings)  # declared at start-up with the configured partition count

    dead_letter_crash = crash_handler(
        publisher, topics, max_payload=settings.worker.dlq_max_payload_bytes, exists=reply_topics.exists
    )
    dead_letter_quietly = crash_handler(  # for usage events and cache records: dead-lettered, never answered
        publisher, topics, max_payload=settings.worker.dlq_max_payload_bytes, exists=None, answer=False
    )

    @app.agent(raw_topic(app, topics.requests, settings), name="gate")
    async def gate_agent(stream: Any) -> None:
        async def handle(event: Any) -> None:
            m = event.message
            await gate.handle(
                Record(value=event.value, topic=m.topic, partition=m.partition, offset=m.offset, key=event.key)
            )

        await process_windowed(stream, handle, max_in_flight=settings.worker.max_in_flight, on_crash=dead_letter_crash)

    @app.agent(raw_topic(app, topics.routed, settings), name="dispatch")
    async def dispatch_agent(stream: Any) -> None:
        async def handle(event: Any) -> None:
            routed = await read_routed(
                event, publisher, topics, max_payload=settings.worker.dlq_max_payload_bytes, exists=reply_topics.exists
            )
            if routed is None:
                return
            await dispatch.handle(routed)

        await process_windowed(stream, handle, max_in_flight=settings.worker.max_in_flight, on_crash=dead_letter_crash)

    infer = InferStage(
        topics=topics,
        embedder=shared_embedder,
        publisher=publisher,
        fallback=dispatch.handle,
        worker_id=wid,
        store_prompts=store_prompts,
    )

    @app.agent(raw_topic(app, topics.infer, settings), name="infer")
    async def infer_agent(stream: Any) -> None:
        """Micro-batches of local embedding requests; acked once their answers are on the broker."""
        # faust reads within=0 as "no time limit" (wait for a full batch): 0 ms here means "do not wait"
        within = max(settings.infer.max_wait_ms, 0.01) / 1000
        async for events in stream.take_events(settings.infer.max_batch, within=within):
            batch, sources = [], []
            for e in events:
                routed = await read_routed(
                    e, publisher, topics, max_payload=settings.worker.dlq_max_payload_bytes, exists=reply_topics.exists
                )
                if routed is not None:
                    batch.append(routed)
                    sources.append(e)
            if not batch:
                continue
            unanswered: list[tuple[int, BaseException]]
            try:
                unanswered = await infer.handle_batch(batch)
            except Exception as failure:  # nothing is lost and the agent lives: each record is dead-lettered
                log.exception("infer batch of %d failed", len(batch))
                unanswered = [(i, failure) for i in range(len(batch))]
            for i, error in unanswered:  # only the records of requests that got no answer at all
                await dead_letter_crash(sources[i], error)

    @app.agent(raw_topic(app, topics.usage, settings), name="settle")
    async def settle_agent(stream: Any) -> None:
        """Charge each tenant what its calls really cost (usage is keyed by tenant, like the quota table)."""

        async def handle(event: Any) -> None:
            usage = _usage_or_none(event.value)
            if usage is not None:
                ledger.settle_usage(usage, position=(event.message.partition, event.message.offset))

        # one at a time, in order; acked and committed by the same rules as the request path; a record that
        # fails is dead-lettered (not answered: its request was) so the partition's commit moves on
        await process_windowed(stream, handle, max_in_flight=1, on_crash=dead_letter_quietly)

    if cache is not None:

        @app.agent(raw_topic(app, topics.cache, settings), name="cache")
        async def cache_agent(stream: Any) -> None:
            """Fills (answers of leading requests, released to their waiters), purges and sweeps, in order.

            One at a time, so a purge never overtakes a fill sent before it; a record is acked once the
            answers it released are on the broker.
            """

            async def handle(event: Any) -> None:
                await cache.handle(event.value, partition=event.message.partition)

            await process_windowed(stream, handle, max_in_flight=1, on_crash=dead_letter_quietly)

        @app.timer(interval=settings.cache.sweep_every_s)
        async def sweep_cache() -> None:
            """Ask each cache partition this worker owns to drop its expired entries (writes need its stream)."""
            sweep = CachePurge(scope="*", expired_only=True, purge_id=f"sweep-{wid}")
            for tp in app.consumer.assignment():
                if tp.topic == topics.cache:
                    await publisher.publish(topics.cache, sweep, partition=tp.partition)

    @app.task
    async def health_feed() -> None:
        await follow_health(
            apply_to_board(board),
            bootstrap=bootstrap,
            topic=topics.health,
            lookback_s=settings.resilience.breaker_recovery_s,
            kafka_options=aiokafka_options(settings),
        )

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _on_assigned(_app: Any, assigned: set[Any], **_: Any) -> None:
        owned = {tp.partition for tp in assigned if tp.topic == topics.routed}
        resize_limits(limiters, catalog, settings.kafka.partitions, owned)
        if cache is not None:
            cache.index.reset()  # re-read from the store on first use: entries moved with their partitions

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _close_providers(_app: Any, **_: Any) -> None:
        for p in providers.values():
            await p.aclose()

    return app
