"""Provider faults through the real pipeline: a flaky primary, a dead fleet, breakers on the health topic."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from schemas.health import ProviderHealth
from schemas.request import Message, Request
from streams.bench import emulator_stats, run_load
from streams.client import AifleetClient
from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FAULTS = Path(__file__).resolve().parent.parent / "fixtures" / "faults.toml"
REQUESTS = int(os.environ.get("AIFLEET_FAULT_REQUESTS", "1000"))


def _profile(emulator: str, provider: str, **profile: object) -> None:
    httpx.post(f"{emulator}/_emulator/profile/{provider}", json=profile, timeout=5).raise_for_status()


async def _health_events(bootstrap: str, topic: str) -> list[ProviderHealth]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        return [ProviderHealth.from_json(r.value) for records in batches.values() for r in records]
    finally:
        await consumer.stop()


def duplicate_provider_calls(ok_calls_by_request: dict[str, int], answered: set[str]) -> int:
    """Provider calls beyond what the requests needed: every successful answer after a request's first,
    and every successful answer to a request that was never answered. A failed call retried after a
    fault was needed, so it is not one."""
    repeats = sum(max(0, n - 1) for n in ok_calls_by_request.values())
    wasted = sum(n for rid, n in ok_calls_by_request.items() if rid not in answered)
    return repeats + wasted


async def test_flaky_primary_with_healthy_secondary(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(FAULTS))
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]

    def make(i: int) -> Request:
        return Request(
            request_id=f"flaky-{run}-{i}",
            tenant="bench",
            messages=[Message(role="user", content=f"flaky question {run} number {i}")],
        )

    with running_stack(env, workers=1) as stack:
        assert stack.emulator_url
        _profile(
            stack.emulator_url, "openai", error_rates={"500": 0.2, "503": 0.1}, rate_limit_rate=0.1, retry_after_s=0.2
        )
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            result, responses = await run_load(
                client, requests=REQUESTS, concurrency=100, timeout_s=120, make_request=make
            )
        stats = emulator_stats(stack.emulator_url)
    ok_ratio = result.ok / result.sent
    served = {r.provider for r in responses if r.status == "ok"}
    assert stats is not None
    calls = stats["total_calls"]
    ok_calls: dict[str, int] = stats["ok_calls_by_request"]
    answered = {r.request_id for r in responses if r.status == "ok"}
    duplicates = duplicate_provider_calls(ok_calls, answered)
    print(
        f"\nflaky primary: sent={result.sent} ok={result.ok} ({ok_ratio:.4%}) lost={result.lost} "
        f"duplicate responses={result.duplicates} provider calls={calls} by provider={stats['calls']} "
        f"successful calls={stats['ok_calls']} duplicate provider calls={duplicates} "
        f"({duplicates / result.sent:.3%} of requests) served by={served} errors={result.error_reasons}"
    )
    assert result.lost == 0
    assert ok_ratio >= 0.999
    assert "azure" in served  # the secondary took what the primary failed
    assert result.duplicates == 0
    assert answered <= set(ok_calls) and all(rid.startswith(f"flaky-{run}-") for rid in ok_calls)
    assert duplicates <= 0.001 * result.sent  # the bound: at most 0.1% duplicate provider calls


async def test_every_provider_down_ends_in_typed_errors_within_the_deadline(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(FAULTS))
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]
    with running_stack(env, workers=1) as stack:
        assert stack.emulator_url
        for provider in ("openai", "azure"):
            _profile(stack.emulator_url, provider, down=True)
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:

            def make(i: int) -> Request:
                return Request(
                    request_id=f"down-{run}-{i}",
                    tenant="bench",
                    deadline_ms=4000,
                    messages=[Message(role="user", content=f"anyone there? {i}")],
                )

            result, responses = await run_load(client, requests=200, concurrency=50, timeout_s=30, make_request=make)
        health = await _health_events(kafka_bootstrap, f"{prefix}.health")
    print(
        f"\nall down: sent={result.sent} answered={len(responses)} lost={result.lost} reasons={result.error_reasons} "
        f"latency p99={result.latency_ms.p99} ms; health transitions={[(h.provider, h.state) for h in health]}"
    )
    assert result.lost == 0 and len(responses) == 200
    assert result.ok == 0
    assert all(r.status == "error" and r.error is not None for r in responses)
    assert set(result.error_reasons) <= {"provider_unavailable", "deadline_exceeded", "no_provider"}
    assert result.latency_ms.p99 < 4000 + 2000  # the deadline bounds every answer (plus queueing slack)
    opened = {h.provider for h in health if h.state == "open"}
    assert opened == {"openai", "azure"}  # both breakers opened, and every worker was told on the health topic
