"""What a request answered without its own provider call receives: chunks, a response, a usage event."""

from __future__ import annotations

from schemas.cache import CachedAnswer, CacheFill, Waiter
from schemas.chunk import StreamChunk
from schemas.errors import ErrorInfo
from schemas.response import Latency, Response, RouteInfo
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent
from streams.publisher import Outbox
from streams.timing import elapsed_ms_since
from streams.topics import Topics


def answered_outbox(
    topics: Topics, waiter: Waiter, answer: CachedAnswer, *, reason: str, worker: str
) -> tuple[Outbox, Outbox]:
    """(chunks, rest): the chunks go to the broker first, then the response and the usage event.

    The response is ``cached``: no provider was called for it, it used no tokens and cost nothing;
    the usage event records the cost it saved (what the answer cost when it was bought).
    """
    chunks: Outbox = []
    route = RouteInfo(provider=answer.provider, model=answer.model, reason=reason)
    if waiter.stream and waiter.kind == "chat":
        chunk_topic = topics.chunks_for(waiter.reply_topic)
        for seq, delta, final in ((0, answer.output or "", False), (1, "", True)):
            chunk = StreamChunk(
                request_id=waiter.request_id,
                tenant=waiter.tenant,
                seq=seq,
                delta=delta,
                final=final,
                provider=answer.provider,
                model=answer.model,
            )
            chunks.append((chunk_topic, chunk, waiter.request_id))
    response = Response(
        request_id=waiter.request_id,
        tenant=waiter.tenant,
        status="cached",
        provider=answer.provider,
        model=answer.model,
        output=answer.output,
        embeddings=answer.embeddings,
        cost_usd=0.0,
        latency=Latency(total_ms=elapsed_ms_since(waiter.created_at)),
        attempts=0,
        route=route,
    )
    usage = UsageEvent(
        event_id=f"{waiter.request_id}:cache",
        request_id=waiter.request_id,
        tenant=waiter.tenant,
        tier=waiter.tier,
        kind=waiter.kind,
        provider=answer.provider,
        model=answer.model,
        status="cached",
        attempt=0,
        saved_cost_usd=answer.cost_usd,
        latency_ms=elapsed_ms_since(waiter.created_at),
        streamed=waiter.stream,
        route_reason=reason,
        region=waiter.region,
        worker=worker,
    )
    return chunks, [(waiter.reply_topic, response, waiter.request_id), (topics.usage, usage, waiter.tenant)]


def failed_outbox(topics: Topics, waiter: Waiter, error: ErrorInfo) -> Outbox:
    """The leader's failure, delivered to a request that waited on it (under its own id)."""
    response = Response(
        request_id=waiter.request_id,
        tenant=waiter.tenant,
        status="error",
        error=error,
        latency=Latency(total_ms=elapsed_ms_since(waiter.created_at)),
    )
    items: Outbox = []
    if waiter.stream and waiter.kind == "chat":
        chunk = StreamChunk(request_id=waiter.request_id, tenant=waiter.tenant, seq=0, final=True, error=error)
        items.append((topics.chunks_for(waiter.reply_topic), chunk, waiter.request_id))
    items.append((waiter.reply_topic, response, waiter.request_id))
    return items


def fill_for(routed: RoutedRequest, response: Response) -> CacheFill | None:
    """The fill a leading request's terminal response sends to the cache (None: it leads nothing)."""
    ticket = routed.cache
    if ticket is None:
        return None
    leader = routed.request.request_id
    if response.status == "ok" and response.provider and response.model:
        answer = CachedAnswer(
            provider=response.provider,
            model=response.model,
            output=response.output,
            embeddings=response.embeddings,
            usage=response.usage,
            cost_usd=response.cost_usd,
        )
        return CacheFill(ticket=ticket, leader=leader, answer=answer)
    # a failed leader: its waiters get its typed error (the cache stage supplies one if it had none)
    return CacheFill(ticket=ticket, leader=leader, error=response.error)
