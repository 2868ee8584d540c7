"""Dedup and caching through the real broker: one provider call per distinct request, exactly.

A workload of 50% exact repeats and 10% concurrent identical twins; the emulator counts provider
calls per request id. The cache then survives a worker restart, keeps tenants apart, honours
idempotency keys, and a purge sends the next repeat to the provider again. A second test runs the
Redis backend against a real redis-server with a shared scope between two tenants.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from schemas.request import Message, Request
from streams.bench import emulator_stats
from streams.bench_cache import build_workload, run_cache_load
from streams.cache.purge import send_purge
from streams.client import AifleetClient
from streams.settings import BENCH_CONFIG_FILE
from tests.fixtures.pipeline import pipeline_env, running_stack
from tests.fixtures.redis_server import redis_server

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def calls_for(stack_url: str | None, prefix: str) -> int:
    stats = emulator_stats(stack_url)
    assert stats is not None
    return sum(n for rid, n in stats["calls_by_request"].items() if rid.startswith(prefix))


def ask(rid: str, content: str, tenant: str = "bench", **fields: object) -> Request:
    fields = {"temperature": 0, **fields}
    return Request(request_id=rid, tenant=tenant, messages=[Message(role="user", content=content)], **fields)  # type: ignore[arg-type]


async def test_provider_calls_equal_distinct_requests_and_the_cache_survives_a_restart(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home)
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    workload = build_workload(400, repeat_ratio=0.5, concurrent_ratio=0.1, tenant="bench")
    run = workload.originals[0].request_id.rsplit("-", 2)[0]  # "cache-<run>"
    with running_stack(env, workers=1) as stack:
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            latencies, responses, lost = await run_cache_load(client, workload, concurrency=50, timeout_s=90)
            await asyncio.sleep(1.0)
            dups = client.duplicates
        calls = calls_for(stack.emulator_url, run)
        print(
            f"\ncache workload: sent=400 distinct={len(workload.originals)} provider calls={calls} "
            f"misses={len(latencies['miss'])} coalesced={len(latencies['coalesced'])} hits={len(latencies['hit'])}"
        )
        assert lost == 0 and dups == 0
        assert len(responses) == 400 and all(r.status in ("ok", "cached") for r in responses)
        assert calls == len(workload.originals) == 160  # exactly one provider call per distinct request
        by_id = {r.request_id: r for r in responses}
        assert all(by_id[t.request_id].status == "cached" for t in workload.twins.values())
        assert all(by_id[r.request_id].status == "cached" for r in workload.repeats)
        answer_of = {o.messages[0].content: by_id[o.request_id].output for o in workload.originals}  # type: ignore[index]
        assert all(by_id[r.request_id].output == answer_of[r.messages[0].content] for r in workload.repeats)  # type: ignore[index]

        # the table is changelog-backed: a fresh worker process answers repeats from it
        (old,) = stack.worker_children()
        stack.terminate(old)
        stack.add_worker(1)
        tag = uuid.uuid4().hex[:6]
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            again = [ask(f"{run}-again{tag}-{i}", o.messages[0].content) for i, o in enumerate(workload.originals[:50])]  # type: ignore[index]
            answers = await asyncio.gather(*(client.request(r, timeout=120) for r in again))
            assert all(a.status == "cached" for a in answers), [a.status for a in answers]
            assert calls_for(stack.emulator_url, run) == 160

            # tenants never see each other's answers: the same prompt from another tenant calls the provider
            other = await client.request(
                ask(
                    f"{run}-other{tag}",
                    workload.originals[0].messages[0].content,  # type: ignore[index]
                    tenant="initech",
                ),
                timeout=60,
            )
            assert other.status == "ok"
            assert calls_for(stack.emulator_url, run) == 161

            # an idempotency key: one call, whatever the content and sampling; each answer under its own id
            first = await client.request(
                ask(f"{run}-idem{tag}-a", "charge order 7", idempotency_key="order-7", temperature=1.0), timeout=60
            )
            second = await client.request(
                ask(f"{run}-idem{tag}-b", "charge order 7 (retry)", idempotency_key="order-7", temperature=1.0),
                timeout=60,
            )
            assert (first.status, second.status) == ("ok", "cached")
            assert second.request_id == f"{run}-idem{tag}-b" and second.output == first.output
            assert calls_for(stack.emulator_url, run) == 162

            # the semantic cache: a paraphrase of an answered prompt is a hit, an unrelated prompt is not
            base = await client.request(
                ask(f"{run}-sem{tag}-a", "How do I reset my password?", allow_semantic_cache=True), timeout=60
            )
            # The answer reaches the client before its cache fill is applied (the fill goes through the cache
            # topic): a paraphrase sent now may find the entry still pending and wait on it (coalesced). An exact
            # repeat returns only once the fill is applied (a hit, or a waiter the fill answers), so after it the
            # paraphrase meets the finished entry.
            repeat = await client.request(
                ask(f"{run}-sem{tag}-a2", "How do I reset my password?", allow_semantic_cache=True), timeout=60
            )
            assert repeat.status == "cached" and repeat.output == base.output
            para = await client.request(
                ask(f"{run}-sem{tag}-b", "What are the steps to reset my password?", allow_semantic_cache=True),
                timeout=60,
            )
            unrelated = await client.request(
                ask(f"{run}-sem{tag}-c", "How do I reset my router?", allow_semantic_cache=True), timeout=60
            )
            assert base.status == "ok" and unrelated.status == "ok"
            assert para.status == "cached" and para.output == base.output
            assert para.route is not None and para.route.reason == "semantic cache hit"
            assert calls_for(stack.emulator_url, run) == 164

            # purge the tenant: the next repeat calls the provider again
            send_purge(kafka_bootstrap, f"{prefix}.cache", "bench")
            await asyncio.sleep(2.0)
            after = await client.request(
                ask(f"{run}-purged{tag}", workload.originals[1].messages[0].content),  # type: ignore[index]
                timeout=60,
            )
            assert after.status == "ok"
            assert calls_for(stack.emulator_url, run) == 165


async def test_redis_backend_shares_a_scope_between_two_tenants_only(
    kafka_bootstrap: str, aifleet_home: Path, tmp_path: Path
) -> None:
    config = tmp_path / "catalog.toml"
    config.write_text(BENCH_CONFIG_FILE.read_text() + '\n[cache_scopes]\nteam = ["acme", "globex"]\n')
    with redis_server(tmp_path / "redis") as url:
        env = pipeline_env(
            kafka_bootstrap,
            aifleet_home,
            AIFLEET_CACHE__BACKEND="redis",
            AIFLEET_CACHE__REDIS_URL=url,
            AIFLEET_CACHE__REDIS_PREFIX=f"t{uuid.uuid4().hex[:6]}",
            AIFLEET_CONFIG_FILE=str(config),
        )
        prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
        run = f"redis-{uuid.uuid4().hex[:6]}"
        with running_stack(env, workers=1) as stack:
            async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
                # concurrent identical requests of two tenants in one shared scope: one call
                answers = await asyncio.gather(
                    *(
                        client.request(ask(f"{run}-{t}-{i}", "what is a changelog topic?", tenant=t), timeout=60)
                        for i in range(5)
                        for t in ("acme", "globex")
                    )
                )
                assert all(a.status in ("ok", "cached") for a in answers)
                assert sum(1 for a in answers if a.status == "ok") == 1
                assert calls_for(stack.emulator_url, run) == 1
                # a tenant outside the scope pays for its own answer
                outside = await client.request(ask(f"{run}-initech", "what is a changelog topic?", tenant="initech"))
                assert outside.status == "ok"
                assert calls_for(stack.emulator_url, run) == 2
