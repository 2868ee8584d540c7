"""Dispatch: call the chosen provider, fall back on retryable failures, answer, and bill every attempt.

For each routed request exactly one terminal Response is published (plus, when streaming, the
chunks before it), and one UsageEvent per provider attempt. ``handle`` never raises: anything
unexpected becomes a typed INTERNAL error response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.base import Event
from schemas.chunk import StreamChunk
from schemas.request import Request
from schemas.response import Latency, Response, RouteInfo, TokenUsage
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent
from streams.errors import AifleetError, DeadlineExceeded, StreamInterrupted
from streams.health_view import HealthView
from streams.providers.base import Completion, Provider, StreamDelta, StreamEnd
from streams.publisher import Publisher, publish_all
from streams.route import Router
from streams.timing import elapsed_ms_since, remaining_s
from streams.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What one request's dispatch accumulated across attempts."""

    routed: RoutedRequest
    attempts: int = 0
    provider_ms: float = 0.0
    excluded: list[str] = field(default_factory=list)
    usage: list[UsageEvent] = field(default_factory=list)
    chunks_sent: int = 0

    @property
    def request(self) -> Request:
        return self.routed.request


class DispatchStage:
    """Calls providers for routed requests and publishes responses, chunks and usage."""

    def __init__(
        self,
        *,
        topics: Topics,
        router: Router,
        providers: Mapping[str, Provider],
        health: HealthView,
        publisher: Publisher,
        worker_id: str,
    ) -> None:
        self._topics = topics
        self._router = router
        self._providers = providers
        self._health = health
        self._pub = publisher
        self._worker = worker_id

    async def handle(self, routed: RoutedRequest) -> None:
        """Serve one routed request to its single terminal response."""
        run = _Run(routed=routed, excluded=list(routed.excluded))
        route = routed.route
        final: list[tuple[str, Event, str | None]]
        try:
            final = await self._serve(run, route)
        except Exception as exc:
            log.exception("dispatch failed unexpectedly for %s", routed.request.request_id)
            err = AifleetError(f"internal error: {type(exc).__name__}")
            final = [(routed.reply_topic, self._error_response(run, err, route), run.request.request_id)]
        usage = [(self._topics.usage, u, u.tenant) for u in run.usage]
        await publish_all(self._pub, [*usage, *final])

    async def _serve(self, run: _Run, route: RouteInfo) -> list[tuple[str, Event, str | None]]:
        request = run.request
        last_error: AifleetError | None = None
        while True:
            left = remaining_s(request.deadline)
            if left <= 0:
                err = DeadlineExceeded(
                    f"deadline of {request.deadline_ms} ms passed after {run.attempts} attempt(s)"
                    + (f"; last error: {last_error.message}" if last_error else "")
                )
                return [(run.routed.reply_topic, self._error_response(run, err, route), request.request_id)]
            run.attempts += 1
            try:
                return await self._attempt(run, route, left)
            except AifleetError as exc:
                last_error = exc
                self._record_usage(run, route, error=exc)
                if not exc.retryable or run.chunks_sent:
                    return self._terminal_error(run, route, exc)
                run.excluded.append(route.provider)
                try:
                    route = self._router.choose(request, excluded=run.excluded, available=self._health.available)
                except AifleetError:
                    return self._terminal_error(run, route, exc)

    def _terminal_error(self, run: _Run, route: RouteInfo, exc: AifleetError) -> list[tuple[str, Event, str | None]]:
        out: list[tuple[str, Event, str | None]] = []
        request = run.request
        if run.chunks_sent:
            chunk = StreamChunk(
                request_id=request.request_id,
                tenant=request.tenant,
                seq=run.chunks_sent,
                provider=route.provider,
                model=route.model,
                final=True,
                error=exc.to_info(),
            )
            out.append((self._topics.chunks_for(run.routed.reply_topic), chunk, request.request_id))
        out.append((run.routed.reply_topic, self._error_response(run, exc, route), request.request_id))
        return out

    async def _attempt(self, run: _Run, route: RouteInfo, left_s: float) -> list[tuple[str, Event, str | None]]:
        provider = self._providers.get(route.provider)
        if provider is None:
            raise AifleetError(f"provider {route.provider!r} is in the catalog but has no adapter")
        request = run.request
        started = time.perf_counter()
        try:
            async with asyncio.timeout(left_s):
                if request.kind == "embedding":
                    emb = await provider.embed(request, route.model)
                    completion = Completion(text="", model=emb.model, usage=emb.usage)
                    vectors: list[list[float]] | None = emb.vectors
                elif request.stream:
                    completion = await self._stream(run, provider, route)
                    vectors = None
                else:
                    completion = await provider.complete(request, route.model)
                    vectors = None
        except TimeoutError as exc:
            run.provider_ms += (time.perf_counter() - started) * 1000
            raise DeadlineExceeded(
                f"{route.provider} did not finish before the request's deadline", provider=route.provider
            ) from exc
        except AifleetError:
            run.provider_ms += (time.perf_counter() - started) * 1000
            raise
        call_ms = (time.perf_counter() - started) * 1000
        run.provider_ms += call_ms
        cost = self._cost(route, completion.usage)
        self._record_usage(run, route, usage=completion.usage, cost=cost, latency_ms=call_ms)
        response = Response(
            request_id=request.request_id,
            tenant=request.tenant,
            status="ok",
            provider=route.provider,
            model=completion.model,
            output=completion.text if request.kind == "chat" else None,
            embeddings=vectors,
            usage=completion.usage,
            cost_usd=cost,
            latency=Latency(total_ms=elapsed_ms_since(request.created_at), provider_ms=run.provider_ms),
            attempts=run.attempts,
            route=route,
        )
        return [(run.routed.reply_topic, response, request.request_id)]

    async def _stream(self, run: _Run, provider: Provider, route: RouteInfo) -> Completion:
        """Relay a provider stream as chunks; the caller publishes the closing response."""
        request = run.request
        topic = self._topics.chunks_for(run.routed.reply_topic)
        pending: list = []
        parts: list[str] = []
        end: StreamEnd | None = None
        try:
            async for item in provider.stream(request, route.model):
                if isinstance(item, StreamDelta):
                    chunk = StreamChunk(
                        request_id=request.request_id,
                        tenant=request.tenant,
                        seq=run.chunks_sent,
                        delta=item.text,
                        provider=route.provider,
                        model=route.model,
                    )
                    pending.append(await self._pub.publish(topic, chunk, key=request.request_id))
                    run.chunks_sent += 1
                    parts.append(item.text)
                else:
                    end = item
        finally:
            if pending:
                await asyncio.gather(*pending)
        if end is None:
            raise StreamInterrupted(f"{route.provider} stream ended without usage", provider=route.provider)
        closing = StreamChunk(
            request_id=request.request_id,
            tenant=request.tenant,
            seq=run.chunks_sent,
            provider=route.provider,
            model=route.model,
            final=True,
        )
        await (await self._pub.publish(topic, closing, key=request.request_id))
        return Completion(text="".join(parts), model=end.model, usage=end.usage, finish_reason=end.finish_reason)

    def _cost(self, route: RouteInfo, usage: TokenUsage) -> float:
        spec = self._router.model_spec(route.provider, route.model)
        return spec.cost_usd(usage.input_tokens, usage.output_tokens) if spec else 0.0

    def _record_usage(
        self,
        run: _Run,
        route: RouteInfo,
        *,
        usage: TokenUsage | None = None,
        cost: float = 0.0,
        latency_ms: float = 0.0,
        error: AifleetError | None = None,
    ) -> None:
        request = run.request
        usage = usage or TokenUsage()
        run.usage.append(
            UsageEvent(
                event_id=f"{request.request_id}:{run.attempts}",
                request_id=request.request_id,
                tenant=request.tenant,
                tier=run.routed.tier,
                kind=request.kind,
                provider=route.provider,
                model=route.model,
                status="error" if error else "ok",
                error_reason=error.reason if error else None,
                attempt=run.attempts,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=cost,
                latency_ms=latency_ms,
                streamed=request.stream,
                route_reason=route.reason,
                region=request.region,
                worker=self._worker,
            )
        )

    def _error_response(self, run: _Run, exc: AifleetError, route: RouteInfo) -> Response:
        request = run.request
        return Response(
            request_id=request.request_id,
            tenant=request.tenant,
            status="error",
            error=exc.to_info(),
            provider=exc.provider,
            latency=Latency(total_ms=elapsed_ms_since(request.created_at), provider_ms=run.provider_ms),
            attempts=run.attempts,
            route=route,
        )
