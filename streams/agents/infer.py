"""Infer: local ONNX embedding requests, taken from the stream in micro-batches and run as one batch.

The gate sends embedding requests whose route is the local provider to the infer topic. This stage
embeds every text of a micro-batch in one onnxruntime call (CUDA when present, CPU otherwise),
then answers each request and bills it (tokens counted, $0). When the model fails, each request
goes on to dispatch with the local provider excluded, so its fallback chain still answers it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka.errors import MessageSizeTooLargeError

from models.embedder import Embedder
from schemas.response import Latency, Response, TokenUsage
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent
from streams.agents.dispatch import prompt_of, publish_fill
from streams.errors import AifleetError, PayloadTooLarge
from streams.observe import observe_outbox
from streams.publisher import Outbox, Publisher, publish_all
from streams.timing import elapsed_ms_since
from streams.topics import Topics

log = logging.getLogger(__name__)


class InferStage:
    """Answers a micro-batch of local embedding requests with one model run."""

    def __init__(
        self,
        *,
        topics: Topics,
        embedder: Callable[[], Embedder],
        publisher: Publisher,
        fallback: Callable[[RoutedRequest], Awaitable[None]],
        worker_id: str,
        store_prompts: bool = False,
    ) -> None:
        self._topics = topics
        self._embedder = embedder
        self._pub = publisher
        self._fallback = fallback
        self._worker = worker_id
        self._store_prompts = store_prompts

    async def handle_batch(self, batch: Sequence[RoutedRequest]) -> list[tuple[int, BaseException]]:
        """Embed all texts of ``batch`` at once and answer every request in it.

        Returns the requests (index in ``batch``, error) that could not be answered at all, not even with an
        error response: only their records are for the dead-letter topic; their batch-mates were answered.
        """
        texts = [t for routed in batch for t in routed.request.input or []]
        started = time.perf_counter()
        try:
            embedder = self._embedder()
            vectors, lengths = await embedder.embed_counted_async(texts)
        except Exception as exc:  # noqa: BLE001 - a model failure: let each request's fallback chain answer
            log.warning("local inference failed (%s); falling back for %d requests", exc, len(batch))
            for routed in batch:
                await self._fallback(routed.model_copy(update={"excluded": [*routed.excluded, "local"]}))
            return []
        batch_ms = (time.perf_counter() - started) * 1000
        outboxes: list[Outbox] = []
        i = 0
        for routed in batch:
            req = routed.request
            n = len(req.input or [])
            tokens = int(sum(lengths[i : i + n]))
            usage = TokenUsage(input_tokens=tokens)
            outboxes.append(
                [
                    (
                        self._topics.usage,
                        UsageEvent(
                            event_id=f"{req.request_id}:1",
                            request_id=req.request_id,
                            tenant=req.tenant,
                            tier=routed.tier,
                            kind="embedding",
                            provider=routed.route.provider,
                            model=routed.route.model,
                            status="ok",
                            attempt=1,
                            input_tokens=tokens,
                            latency_ms=batch_ms,
                            route_reason=routed.route.reason,
                            region=req.region,
                            worker=self._worker,
                            prompt=prompt_of(req) if self._store_prompts else None,
                        ),
                        req.tenant,
                    ),
                    (
                        routed.reply_topic,
                        Response(
                            request_id=req.request_id,
                            tenant=req.tenant,
                            status="ok",
                            provider=routed.route.provider,
                            model=routed.route.model,
                            embeddings=vectors[i : i + n].tolist(),
                            usage=usage,
                            cost_usd=0.0,
                            latency=Latency(total_ms=elapsed_ms_since(req.created_at), provider_ms=batch_ms),
                            attempts=1,
                            route=routed.route,
                        ),
                        req.request_id,
                    ),
                ]
            )
            i += n
        # Each request's records go out (and fill its own cache entry) on their own: request ids are the
        # clients' and may repeat across tenants, and one answer the broker refuses must not sink the batch.
        results = await asyncio.gather(
            *(self._answer(routed, outbox) for routed, outbox in zip(batch, outboxes, strict=True)),
            return_exceptions=True,
        )
        return [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]

    async def _answer(self, routed: RoutedRequest, outbox: Outbox) -> None:
        """Publish one request's usage and answer, then its cache fill.

        An answer that cannot be published is replaced by a typed error response (``payload_too_large`` when
        the broker refused its size), so its requester is still answered, once. A fill that cannot be published
        after the answer went out becomes an error fill: the requests waiting on the entry get the error (and
        may retry) instead of waiting for the sweep; the requester is not answered again, and the request is
        not handed back for the dead-letter topic (it was answered).
        """
        observe_outbox("infer", outbox)
        req = routed.request
        try:
            await publish_all(self._pub, outbox)
        except Exception as exc:  # noqa: BLE001 - answered below with a typed error instead
            log.warning("could not publish the embeddings of %s: %s", req.request_id, exc)
            failed = self._failed(routed, exc)
            await publish_all(self._pub, [(routed.reply_topic, failed, req.request_id)])
            await publish_fill(self._pub, self._topics, routed, [(routed.reply_topic, failed, req.request_id)])
            return
        try:
            await publish_fill(self._pub, self._topics, routed, outbox)
        except Exception as exc:  # noqa: BLE001 - the waiters get the error instead
            log.warning("could not publish the cache fill of %s: %s", req.request_id, exc)
            failed = self._failed(routed, exc)
            try:
                await publish_fill(self._pub, self._topics, routed, [(routed.reply_topic, failed, req.request_id)])
            except Exception:  # answered already: the entry's sweep releases its waiters
                log.warning("could not publish an error fill for %s either", req.request_id, exc_info=True)

    @staticmethod
    def _failed(routed: RoutedRequest, exc: BaseException) -> Response:
        req = routed.request
        error: AifleetError
        if isinstance(exc, MessageSizeTooLargeError):
            error = PayloadTooLarge(
                f"the answer ({len(req.input or [])} embeddings) is larger than the broker accepts; "
                "send fewer texts per request"
            )
        else:
            error = AifleetError(f"the answer could not be published: {type(exc).__name__}")
        return Response(
            request_id=req.request_id,
            tenant=req.tenant,
            status="error",
            error=error.to_info(),
            provider=routed.route.provider,
            latency=Latency(total_ms=elapsed_ms_since(req.created_at)),
            attempts=1,
            route=routed.route,
        )
