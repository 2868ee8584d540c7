"""Tiers through the real pipeline (exact daily quotas with 2 workers) and local embeddings via the infer agent."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest

from schemas.request import Message, Request
from streams.client import AifleetClient
from streams.settings import DEFAULT_CONFIG_FILE
from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_free_tier_gets_exactly_its_daily_quota_across_two_workers(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(DEFAULT_CONFIG_FILE))
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]
    with running_stack(env, workers=2):
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            requests = [
                Request(
                    request_id=f"free-{run}-{i}",
                    tenant="demo",  # tier free in the shipped catalog
                    messages=[Message(role="user", content=f"free question {i}")],
                )
                for i in range(150)
            ]
            sem = asyncio.Semaphore(30)

            async def one(r: Request):
                async with sem:
                    return await client.request(r, timeout=90)

            answers = await asyncio.gather(*(one(r) for r in requests))
    ok = [a for a in answers if a.status == "ok"]
    refused = [a for a in answers if a.status == "error"]
    assert len(ok) == 100
    assert len(refused) == 50
    assert {a.error.reason.value for a in refused if a.error} == {"quota_exceeded"}
    assert all(a.error and a.error.resets_at is not None for a in refused)
    # free tier: self-hosted models only
    assert {a.provider for a in ok} <= {"local", "vllm", "ollama"}


async def test_embeddings_answered_by_the_local_model_through_kafka(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(DEFAULT_CONFIG_FILE))
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    texts = [
        "How do I reset my password?",
        "What are the steps to change my forgotten password?",
        "The stock market fell sharply today.",
    ]
    with running_stack(env, workers=1):
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            answers = await asyncio.gather(
                *(
                    client.request(
                        Request(
                            request_id=f"emb-{i}-{uuid.uuid4().hex[:6]}",
                            tenant="acme",
                            kind="embedding",
                            input=texts,
                            cache_bypass=True,  # every one through the infer stage (identical ones would coalesce)
                        ),
                        timeout=120,
                    )
                    for i in range(20)
                )
            )
            # without the bypass, an identical embedding request is answered from the cache, with the same vectors
            first, again = [
                await client.request(
                    Request(
                        request_id=f"emb-c{i}-{uuid.uuid4().hex[:6]}", tenant="acme", kind="embedding", input=texts
                    ),
                    timeout=120,
                )
                for i in range(2)
            ]
    assert (first.status, again.status) == ("ok", "cached")
    assert again.embeddings == first.embeddings and again.cost_usd == 0.0
    for a in answers:
        assert a.status == "ok", a.error
        assert a.provider == "local" and a.model == "all-minilm-l6-v2"
        assert a.embeddings is not None and len(a.embeddings) == 3
        assert a.usage.input_tokens > 0 and a.cost_usd == 0.0
    v = np.array(answers[0].embeddings)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # the paraphrase is closer than the unrelated sentence


async def test_embed_bench_measures_the_infer_stage_on_every_run(kafka_bootstrap: str, aifleet_home: Path) -> None:
    from streams.bench_embed import run_embed_bench
    from streams.settings import Settings

    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(DEFAULT_CONFIG_FILE))
    with running_stack(env, workers=1):
        settings = Settings()
        # The same texts twice: the second run must not be answered from the first one's cache entries
        # (run_embed_bench checks that every answer came from the local model, not the cache).
        runs = [
            await run_embed_bench(kafka_bootstrap, settings, requests=40, concurrency=8, texts_per_request=2)
            for _ in range(2)
        ]
    for r in runs:
        assert (r.ok, r.lost, r.texts_per_request) == (40, 0, 2)
        assert r.variant == "int8" and r.execution_provider == "CPUExecutionProvider"
        assert r.bare_sentences_per_s == pytest.approx(sum(r.bare_before_after) / 2, abs=0.1)
        assert r.ratio == pytest.approx(r.kafka_sentences_per_s / r.bare_sentences_per_s, abs=0.01)
