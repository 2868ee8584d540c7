"""``aifleet bench embed``: the infer stage's throughput through Kafka against the bare model's, one run.

Embedding requests (one sentence each) go through the real pipeline (gate, infer topic,
micro-batched infer agent, response topic); then the same sentences run through the same model
in-process, batched as the agent batches them. The ratio says what Kafka and the stream cost.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from pydantic import BaseModel

from models.corpus import SAMPLE_SENTENCES
from schemas.request import Request
from streams.bench import Percentiles, run_load
from streams.client import AifleetClient
from streams.settings import Settings


class EmbedBenchResult(BaseModel):
    """Kafka-path and bare-model throughput for the same sentences, measured in one run."""

    requests: int
    texts_per_request: int
    ok: int
    lost: int
    kafka_sentences_per_s: float
    kafka_latency_ms: Percentiles
    bare_sentences_per_s: float
    bare_before_after: tuple[float, float]
    ratio: float
    variant: str
    execution_provider: str
    max_batch: int


def _bare_throughput(texts: list[str], max_batch: int) -> tuple[float, str, str]:
    from streams.providers.local import shared_embedder

    embedder = shared_embedder()
    embedder.embed(texts[:max_batch])  # load and warm up
    t0 = time.perf_counter()
    for i in range(0, len(texts), max_batch):
        embedder.embed(texts[i : i + max_batch])
    rate = len(texts) / (time.perf_counter() - t0)
    return rate, embedder.variant, embedder.report.provider


async def run_embed_bench(
    bootstrap: str, settings: Settings, *, requests: int, concurrency: int, texts_per_request: int = 1
) -> EmbedBenchResult:
    run = uuid.uuid4().hex[:6]
    k = texts_per_request
    texts = [f"{SAMPLE_SENTENCES[i % len(SAMPLE_SENTENCES)]} ({i})" for i in range(requests * k)]

    def make(i: int) -> Request:
        # cache_bypass: this measures the infer stage, which a cache hit (an earlier run's texts) would skip
        return Request(
            request_id=f"emb-{run}-{i}",
            tenant="bench",
            kind="embedding",
            input=texts[i * k : (i + 1) * k],
            cache_bypass=True,
        )

    async with AifleetClient.from_settings(settings, bootstrap) as client:
        # warm the worker's model before timing
        await client.request(make(0).model_copy(update={"request_id": f"emb-{run}-warm"}), timeout=120)
        # The bare model is measured right before and right after the Kafka run, and the two averaged, so a
        # neighbour's load that comes or goes during the run weighs on both sides of the ratio alike.
        before, variant, active = await asyncio.to_thread(_bare_throughput, texts, settings.infer.max_batch)
        result, responses = await run_load(
            client, requests=requests, concurrency=concurrency, timeout_s=120, make_request=make, settle_s=0.5
        )
        after, _, _ = await asyncio.to_thread(_bare_throughput, texts, settings.infer.max_batch)
    kafka_rate = result.ok * k / result.elapsed_s if result.elapsed_s else 0.0
    bare_rate = (before + after) / 2
    assert all(r.provider == "local" and r.status == "ok" for r in responses if r.status in ("ok", "cached")), (
        "embeddings must take the infer path"
    )
    return EmbedBenchResult(
        requests=requests,
        texts_per_request=k,
        ok=result.ok,
        lost=result.lost,
        kafka_sentences_per_s=round(kafka_rate, 1),
        kafka_latency_ms=result.latency_ms,
        bare_sentences_per_s=round(bare_rate, 1),
        bare_before_after=(round(before, 1), round(after, 1)),
        ratio=round(kafka_rate / bare_rate, 3) if bare_rate else 0.0,
        variant=variant,
        execution_provider=active,
        max_batch=settings.infer.max_batch,
    )
