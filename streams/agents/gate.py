"""The gate: validate, dead-letter what is bad, decide the route, hand valid work to dispatch.

Every record ends in exactly one of: a routed request, or a dead letter plus (when its id is
readable) a typed error response. Nothing raises out of ``handle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.request import Request, Tier
from schemas.response import Latency, Response
from schemas.routed import RoutedRequest
from streams.codec import dead_letter, decode_request
from streams.errors import AifleetError, ForbiddenReplyTopic, InvalidRecord
from streams.publisher import Publisher, publish_all
from streams.route import Router
from streams.timing import elapsed_ms_since
from streams.topics import Topics


@dataclass(frozen=True, slots=True)
class Record:
    """The part of a Kafka record a stage needs."""

    value: bytes | None
    topic: str
    partition: int
    offset: int


class GateStage:
    """Turns raw request records into routed requests, error responses and dead letters."""

    def __init__(
        self,
        *,
        topics: Topics,
        router: Router,
        available: Callable[[str], bool],
        publisher: Publisher,
        max_request_bytes: int,
        dlq_max_payload_bytes: int,
        default_tier: Tier,
    ) -> None:
        self._topics = topics
        self._router = router
        self._available = available
        self._pub = publisher
        self._max_bytes = max_request_bytes
        self._dlq_max = dlq_max_payload_bytes
        self._default_tier = default_tier

    def _reply_topic_for(self, tenant: str | None, requested: str | None) -> str:
        if tenant and requested and self._topics.reply_allowed(tenant, requested):
            return requested
        return self._topics.responses

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
        except InvalidRecord as exc:
            await self._reject(record, exc)
            return
        await self._admit(request)

    async def _reject(self, record: Record, exc: InvalidRecord) -> None:
        letter = dead_letter(
            exc,
            record.value,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            max_payload=self._dlq_max,
        )
        items: list = [(self._topics.dlq, letter, exc.request_id)]
        if exc.request_id:
            reply = self._reply_topic_for(exc.tenant, None if isinstance(exc, ForbiddenReplyTopic) else exc.reply_topic)
            items.append(
                (
                    reply,
                    Response(request_id=exc.request_id, tenant=exc.tenant, status="error", error=exc.to_info()),
                    exc.request_id,
                )
            )
        await publish_all(self._pub, items)

    async def _admit(self, request: Request) -> None:
        reply = request.reply_topic or self._topics.responses
        try:
            route = self._router.choose(request, available=self._available)
        except AifleetError as exc:
            response = Response(
                request_id=request.request_id,
                tenant=request.tenant,
                status="error",
                error=exc.to_info(),
                latency=Latency(total_ms=elapsed_ms_since(request.created_at)),
            )
            await publish_all(self._pub, [(reply, response, request.request_id)])
            return
        routed = RoutedRequest(request=request, route=route, tier=request.tier or self._default_tier, reply_topic=reply)
        await publish_all(self._pub, [(self._topics.routed, routed, request.request_id)])
