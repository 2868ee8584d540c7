"""The gate: validate, dead-letter what is bad, decide the route, hand valid work to dispatch.

Every record ends in exactly one of: a routed request, or a dead letter plus (when its id is
readable) a typed error response. Nothing raises out of ``handle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.partitioner import murmur2

from schemas.base import utc_now
from schemas.request import Request, Tier
from schemas.response import Latency, Response
from schemas.routed import RoutedRequest
from streams import metrics
from streams.cache.stage import CacheStage
from streams.codec import decode_request
from streams.errors import AifleetError, ForbiddenReplyTopic, InvalidRecord, MissingReplyTopic
from streams.observe import observe_outbox
from streams.publisher import Publisher, publish_all
from streams.rejects import TopicExists, reject
from streams.routing.policy import CostAwareRouter
from streams.routing.quota import QuotaLedger
from streams.timing import elapsed_ms_since
from streams.topics import Topics

LOCAL_PROVIDER = "local"
"""Requests routed to this provider go to the infer stage (micro-batched local ONNX)."""


@dataclass(frozen=True, slots=True)
class Record:
    """The part of a Kafka record a stage needs."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None


class GateStage:
    """Turns raw request records into routed requests, error responses and dead letters."""

    def __init__(
        self,
        *,
        topics: Topics,
        router: CostAwareRouter,
        ledger: QuotaLedger,
        available: Callable[[str], bool],
        load: Callable[[str], float],
        publisher: Publisher,
        max_request_bytes: int,
        dlq_max_payload_bytes: int,
        default_tier: Tier,
        cache: CacheStage | None = None,
        reply_exists: TopicExists | None = None,
        partitions: int | None = None,
    ) -> None:
        """``reply_exists``: whether the broker has a reply topic (None: every allowed one is taken to exist).
        ``partitions``: the requests topic's partition count, to find a tenant's home partition (None: a
        record keyed by its tenant is taken to be on it)."""
        self._topics = topics
        self._router = router
        self._available = available
        self._load = load
        self._ledger = ledger
        self._pub = publisher
        self._max_bytes = max_request_bytes
        self._dlq_max = dlq_max_payload_bytes
        self._default_tier = default_tier
        self._cache = cache
        self._reply_exists = reply_exists
        self._partitions = partitions

    async def handle(self, record: Record) -> None:
        """Process one request record."""
        try:
            request = decode_request(record.value, max_bytes=self._max_bytes)
            if request.reply_topic and not self._topics.reply_allowed(request.tenant, request.reply_topic):
                raise ForbiddenReplyTopic(
                    f"reply_topic {request.reply_topic!r} is outside tenant {request.tenant!r}'s namespace "
                    f"({self._topics.responses} or {self._topics.responses}.{request.tenant}[.*])",
                    request_id=request.request_id,
                    tenant=request.tenant,
                )
            if (
                request.reply_topic
                and request.reply_topic != self._topics.responses
                and self._reply_exists is not None
                and not await self._reply_exists(request.reply_topic)
            ):
                raise MissingReplyTopic(
                    f"reply_topic {request.reply_topic!r} does not exist; create it before sending requests "
                    "that name it (topics are not auto-created)",
                    request_id=request.request_id,
                    tenant=request.tenant,
                )
        except InvalidRecord as exc:
            await self._reject(record, exc)
            return
        home = self.home_partition(request.tenant)
        if (record.partition != home) if home is not None else (record.key != request.tenant.encode()):
            # Quotas are counted where the tenant's partition lives (the one its usage events reach, by the
            # murmur2 partitioner of Kafka's Java and aiokafka clients). A record elsewhere (another key, or
            # the tenant's key through another partitioner: librdkafka hashes with CRC32) is sent there once.
            await (
                await self._pub.publish_raw(
                    self._topics.requests, record.value or b"", key=request.tenant, partition=home
                )
            )
            return
        await self._admit(request, record.partition)

    def home_partition(self, tenant: str) -> int | None:
        """The requests partition a tenant's records belong on (None when the partition count is not known)."""
        if self._partitions is None:
            return None
        return (murmur2(tenant.encode()) & 0x7FFFFFFF) % self._partitions

    async def _reject(self, record: Record, exc: InvalidRecord) -> None:
        metrics.record_request("gate", exc.reason.value)
        await reject(
            self._pub,
            self._topics,
            exc,
            record.value,
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            max_payload=self._dlq_max,
            requested_reply=None if isinstance(exc, ForbiddenReplyTopic) else exc.reply_topic,
            exists=self._reply_exists,
        )

    async def _admit(self, request: Request, partition: int) -> None:
        reply = request.reply_topic or self._topics.responses
        catalog = self._router.catalog
        tier = catalog.tier_of(request.tenant, request.tier, self._default_tier)
        ticket = None
        if self._cache is not None:
            admission = await self._cache.admit(request, tier=tier, reply_topic=reply, partition=partition)
            if admission.answered:
                metrics.record_request("gate", "cached")
                return
            ticket = admission.ticket
        try:
            plan = self._router.plan(
                request, tier=tier, available=self._available, load=self._load, region=catalog.region_of(request.tenant)
            )
            self._ledger.admit(request.tenant, tier, utc_now(), plan.estimated_cost_usd, request_id=request.request_id)
        except AifleetError as exc:
            response = Response(
                request_id=request.request_id,
                tenant=request.tenant,
                status="error",
                error=exc.to_info(),
                latency=Latency(total_ms=elapsed_ms_since(request.created_at)),
            )
            observe_outbox("gate", [(reply, response, request.request_id)])
            await publish_all(self._pub, [(reply, response, request.request_id)])
            if ticket is not None and self._cache is not None:
                await self._cache.abandon(ticket, request.request_id, exc.to_info())
            return
        routed = RoutedRequest(request=request, route=plan.route, tier=tier, reply_topic=reply, cache=ticket)
        metrics.record_request("gate", "admitted")
        local = request.kind == "embedding" and plan.route.provider == LOCAL_PROVIDER
        topic = self._topics.infer if local else self._topics.routed
        await publish_all(self._pub, [(topic, routed, request.request_id)])
