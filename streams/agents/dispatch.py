"""Dispatch: call providers through breakers, rate limits, retries and fallback; answer; bill every attempt.

For each routed request exactly one terminal Response is published (after its chunks, when
streaming) and one UsageEvent per provider call that was made. A request that ends without any call
(every limiter saturated, every circuit open, the deadline gone first) gets one ``rejected`` usage
event instead, at $0: the settle agent releases the budget its admission reserved (else the hold
would block the tenant's budget until it expires); the analytics sink does not store it. ``handle``
never raises: anything unexpected becomes a typed INTERNAL error response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.chunk import StreamChunk
from schemas.request import Request
from schemas.response import Latency, Response, RouteInfo, TokenUsage
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent
from streams.cache.answers import fill_for
from streams.errors import AifleetError
from streams.observe import observe_outbox
from streams.providers.base import StreamDelta, StreamEnd
from streams.publisher import Outbox, Publisher, publish_all
from streams.resilience.caller import Attempt, ResilientCaller, StreamError
from streams.resilience.clock import Deadline
from streams.routing.policy import CostAwareRouter
from streams.timing import elapsed_ms_since
from streams.topics import Topics

log = logging.getLogger(__name__)


def prompt_of(request: Request) -> str:
    """A request's prompt as the prompts table keeps it: one 'role: content' line per message, or its texts."""
    if request.kind == "embedding":
        return "\n".join(request.input or [])
    return "\n".join(f"{m.role}: {m.content}" for m in request.messages or [])


def chain_of(routed: RoutedRequest) -> list[tuple[str, str]]:
    """The route's provider first, then its fallbacks ("provider:model"), minus excluded providers."""
    chain = [(routed.route.provider, routed.route.model)]
    for entry in routed.route.fallback:
        provider, _, model = entry.partition(":")
        chain.append((provider, model))
    skip = set(routed.excluded)
    return [(p, m) for p, m in chain if p not in skip]


@dataclass
class _Run:
    """One request's dispatch: what it published so far and what it cost."""

    routed: RoutedRequest
    chunks_sent: int = 0
    outbox: Outbox = field(default_factory=list)

    @property
    def request(self) -> Request:
        return self.routed.request


class DispatchStage:
    """Calls providers for routed requests and publishes responses, chunks and usage."""

    def __init__(
        self,
        *,
        topics: Topics,
        router: CostAwareRouter,
        caller: ResilientCaller,
        publisher: Publisher,
        worker_id: str,
        store_prompts: bool = False,
    ) -> None:
        self._topics = topics
        self._router = router
        self._caller = caller
        self._pub = publisher
        self._worker = worker_id
        self._store_prompts = store_prompts

    async def handle(self, routed: RoutedRequest) -> None:
        """Serve one routed request to its single terminal response."""
        run = _Run(routed=routed)
        try:
            await self._serve(run)
        except Exception as exc:
            log.exception("dispatch failed unexpectedly for %s", routed.request.request_id)
            err = AifleetError(f"internal error: {type(exc).__name__}")
            run.outbox = [item for item in run.outbox if item[0] == self._topics.usage]
            run.outbox.append((routed.reply_topic, self._error_response(run, err, [], routed.route), None))
        if not any(topic == self._topics.usage for topic, _, _ in run.outbox):
            run.outbox.append(self._rejected(run))
        observe_outbox("dispatch", run.outbox)
        await publish_all(self._pub, run.outbox)
        await publish_fill(self._pub, self._topics, routed, run.outbox)

    async def _serve(self, run: _Run) -> None:
        request = run.request
        chain = chain_of(run.routed)
        deadline = Deadline.at_wall(request.deadline)
        if request.stream and request.kind == "chat":
            await self._serve_stream(run, chain, deadline)
            return
        if request.kind == "embedding":
            result_e = await self._caller.embed(request, chain, deadline)
            attempts = result_e.attempts
            self._bill(run, attempts)
            if result_e.value is None or result_e.error is not None:
                self._answer_error(run, result_e.error, attempts)
                return
            emb = result_e.value
            self._answer_ok(run, attempts, model=emb.model, usage=emb.usage, embeddings=emb.vectors)
            return
        result = await self._caller.complete(request, chain, deadline)
        self._bill(run, result.attempts)
        if result.value is None or result.error is not None:
            self._answer_error(run, result.error, result.attempts)
            return
        c = result.value
        self._answer_ok(run, result.attempts, model=c.model, usage=c.usage, output=c.text)

    async def _serve_stream(self, run: _Run, chain: list[tuple[str, str]], deadline: Deadline) -> None:
        request = run.request
        chunk_topic = self._topics.chunks_for(run.routed.reply_topic)
        stream = self._caller.stream(request, chain, deadline)
        parts: list[str] = []
        pending = []
        end: StreamEnd | None = None
        failure: AifleetError | None = None
        async for item in stream:
            if isinstance(item, StreamDelta):
                chunk = StreamChunk(
                    request_id=request.request_id,
                    tenant=request.tenant,
                    seq=run.chunks_sent,
                    delta=item.text,
                    provider=stream.provider,
                    model=stream.model,
                )
                pending.append(await self._pub.publish(chunk_topic, chunk, key=request.request_id))
                run.chunks_sent += 1
                parts.append(item.text)
            elif isinstance(item, StreamEnd):
                end = item
            elif isinstance(item, StreamError):
                failure = item.error
        for fut in pending:
            await fut
        attempts = list(stream.attempts)
        self._bill(run, attempts)
        closing = StreamChunk(
            request_id=request.request_id,
            tenant=request.tenant,
            seq=run.chunks_sent,
            provider=stream.provider,
            model=stream.model,
            final=True,
            error=failure.to_info() if failure and run.chunks_sent else None,
        )
        if run.chunks_sent or (end is not None and failure is None):
            # the closing chunk is on the broker before the response that ends the stream is produced
            await (await self._pub.publish(chunk_topic, closing, key=request.request_id))
        if end is None or failure is not None:
            self._answer_error(run, failure, attempts)
            return
        self._answer_ok(run, attempts, model=end.model, usage=end.usage, output="".join(parts))

    # -- answers and bills -------------------------------------------------------------------
    @staticmethod
    def _route_of(first: RouteInfo, attempts: Sequence[Attempt]) -> RouteInfo:
        """The route that actually served: the planned one, or the fallback that answered."""
        served = next((a for a in reversed(attempts) if a.outcome == "ok"), None)
        if served is None or (served.provider == first.provider and served.model == first.model):
            return first
        return RouteInfo(
            provider=served.provider,
            model=served.model,
            reason=f"fallback after {first.provider}:{first.model} failed",
            fallback=[],
        )

    def _answer_ok(
        self,
        run: _Run,
        attempts: Sequence[Attempt],
        *,
        model: str,
        usage: TokenUsage,
        output: str | None = None,
        embeddings: list[list[float]] | None = None,
    ) -> None:
        request = run.request
        route = self._route_of(run.routed.route, attempts)
        response = Response(
            request_id=request.request_id,
            tenant=request.tenant,
            status="ok",
            provider=route.provider,
            model=model,
            output=output,
            embeddings=embeddings,
            usage=usage,
            cost_usd=self._cost(route.provider, route.model, usage),
            latency=Latency(total_ms=elapsed_ms_since(request.created_at), provider_ms=_provider_ms(attempts)),
            attempts=sum(1 for a in attempts if a.called),
            route=route,
        )
        run.outbox.append((run.routed.reply_topic, response, request.request_id))

    def _answer_error(self, run: _Run, error: AifleetError | None, attempts: Sequence[Attempt]) -> None:
        err = error or AifleetError("no provider produced an answer")
        run.outbox.append(
            (run.routed.reply_topic, self._error_response(run, err, attempts, run.routed.route), run.request.request_id)
        )

    def _error_response(self, run: _Run, exc: AifleetError, attempts: Sequence[Attempt], route: RouteInfo) -> Response:
        request = run.request
        return Response(
            request_id=request.request_id,
            tenant=request.tenant,
            status="error",
            error=exc.to_info(),
            provider=exc.provider,
            latency=Latency(total_ms=elapsed_ms_since(request.created_at), provider_ms=_provider_ms(attempts)),
            attempts=sum(1 for a in attempts if a.called),
            route=route,
        )

    def _cost(self, provider: str, model: str, usage: TokenUsage) -> float:
        spec = self._router.model_spec(provider, model)
        return spec.cost_usd(usage.input_tokens, usage.output_tokens) if spec else 0.0

    def _bill(self, run: _Run, attempts: Sequence[Attempt]) -> None:
        """One usage event per call that was made; ids are stable, so a replay never double-counts."""
        request = run.request
        n = 0
        for a in attempts:
            if not a.called:
                continue
            n += 1
            if a.outcome == "ok":
                self._router.latency.observe(a.provider, a.latency_s * 1000, model=a.model)
            usage = a.usage or TokenUsage()
            event = self._usage_event(
                run,
                n,
                provider=a.provider,
                model=a.model,
                status="ok" if a.outcome == "ok" else "error",
                error_reason=a.reason,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=self._cost(a.provider, a.model, usage),
                latency_ms=a.latency_s * 1000,
                prompt=prompt_of(request) if self._store_prompts and n == 1 else None,
            )
            run.outbox.append((self._topics.usage, event, request.tenant))

    def _rejected(self, run: _Run) -> tuple[str, UsageEvent, str]:
        """The usage event of a request that ended without a provider call: $0, it releases its reservation."""
        route = run.routed.route
        response = next((e for _, e, _ in run.outbox if isinstance(e, Response)), None)
        reason = response.error.reason if response is not None and response.error is not None else None
        event = self._usage_event(
            run, 0, provider=route.provider, model=route.model, status="rejected", error_reason=reason
        )
        return (self._topics.usage, event, run.request.tenant)

    def _usage_event(self, run: _Run, attempt: int, **fields: Any) -> UsageEvent:
        """Attempt ``attempt``'s usage event: what every one of a request's events shares, plus ``fields``."""
        request = run.request
        return UsageEvent(
            event_id=f"{request.request_id}:{attempt}",
            request_id=request.request_id,
            tenant=request.tenant,
            tier=run.routed.tier,
            kind=request.kind,
            attempt=attempt,
            streamed=request.stream,
            route_reason=run.routed.route.reason,
            region=request.region,
            worker=self._worker,
            **fields,
        )


async def publish_fill(publisher: Publisher, topics: Topics, routed: RoutedRequest, outbox: Outbox) -> None:
    """A leading request's answer, sent to the cache partition that owns its entry (after the answer itself)."""
    if routed.cache is None:
        return
    response = next((e for _, e, _ in outbox if isinstance(e, Response)), None)
    fill = fill_for(routed, response) if response is not None else None
    if fill is not None:
        await (await publisher.publish(topics.cache, fill, key=fill.ticket.scope, partition=fill.ticket.partition))


def _provider_ms(attempts: Sequence[Attempt]) -> float:
    return sum(a.latency_s for a in attempts if a.called) * 1000
