"""The primary's circuit breaker through the real pipeline, as the health topic shows it.

The primary fails every call: its circuit opens within 5 consecutive failed calls. Healed, and the
recovery timeout passed, the pipeline sends it exactly one probe (``half_open``), and the probe's
success closes the circuit (``closed``). Provider calls are counted by the emulator by arrival time,
so they line up with the transitions' timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from schemas.health import ProviderHealth
from schemas.request import Message, Request
from schemas.response import Response
from streams.client import AifleetClient
from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FAULTS = Path(__file__).resolve().parent.parent / "fixtures" / "faults.toml"
FAILURES = 5  # the breaker_failures setting (its default)
RECOVERY_S = 3.0
PROBE_LATENCY_MS = 1500  # the healed primary answers slowly, so the burst arrives while its probe is out
BURST = 20


class HealthLog:
    """Every event on the health topic, from its beginning, collected in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.events: list[ProviderHealth] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HealthLog]:
        await self._consumer.start()
        task = asyncio.create_task(self._collect())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._consumer.stop()

    async def _collect(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.events.extend(ProviderHealth.from_json(r.value) for r in records)

    def of(self, provider: str) -> list[ProviderHealth]:
        return [e for e in self.events if e.provider == provider]

    async def wait_for(self, found: Callable[[list[ProviderHealth]], bool], timeout_s: float) -> None:
        give_up = time.monotonic() + timeout_s
        while not found(self.events):
            if time.monotonic() > give_up:
                raise AssertionError(f"not on the health topic after {timeout_s}s: {self.transitions()}")
            await asyncio.sleep(0.1)

    def transitions(self) -> list[tuple[str, str | None, str]]:
        return [(e.provider, e.previous_state, e.state) for e in self.events]


def _profile(emulator: str, provider: str, **profile: object) -> None:
    httpx.post(f"{emulator}/_emulator/profile/{provider}", json=profile, timeout=5).raise_for_status()


def _calls(emulator: str, provider: str, since: float = 0.0, until: float | None = None) -> int:
    """Calls that reached ``provider`` between two wall-clock times (the emulator stamps each on arrival)."""
    params = {"since": repr(since), **({"until": repr(until)} if until is not None else {})}
    doc = httpx.get(f"{emulator}/_emulator/calls", params=params, timeout=5).raise_for_status().json()
    return int(doc["calls"].get(provider, 0))


async def test_breaker_opens_probes_once_and_closes_on_the_health_topic(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    env = pipeline_env(
        kafka_bootstrap,
        aifleet_home,
        AIFLEET_CONFIG_FILE=str(FAULTS),
        AIFLEET_RESILIENCE__BREAKER_FAILURES=str(FAILURES),
        AIFLEET_RESILIENCE__BREAKER_RECOVERY_S=str(RECOVERY_S),
    )
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]

    def make(phase: str, i: int) -> Request:
        return Request(
            request_id=f"{phase}-{run}-{i}",
            tenant="bench",
            messages=[Message(role="user", content=f"{phase} question {run} number {i}")],
        )

    with running_stack(env, workers=1) as stack:
        emu = stack.emulator_url
        assert emu
        async with (
            AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client,
            HealthLog(kafka_bootstrap, f"{prefix}.health").running() as health,
        ):
            # 1. Every primary call fails (HTTP 5xx). One request at a time, so no call is in flight
            #    when the circuit opens: each request retries the primary, then the secondary answers.
            _profile(emu, "openai", error_rates={"500": 0.5, "503": 0.5})
            failing = [await client.request(make("failing", i), timeout=30) for i in range(3)]
            await health.wait_for(lambda _: any(e.state == "open" for e in health.of("openai")), 10)
            opened = health.of("openai")[0]
            calls_before_open = _calls(emu, "openai", until=opened.ts.timestamp())
            calls_failing = _calls(emu, "openai")

            # 2. Healed, but no call goes to the primary until the recovery timeout has passed.
            _profile(emu, "openai", latency_ms=PROBE_LATENCY_MS)
            await asyncio.sleep(max(0.0, opened.ts.timestamp() + RECOVERY_S + 0.5 - time.time()))
            calls_while_open = _calls(emu, "openai", since=opened.ts.timestamp())

            # 3. A burst of traffic: one request carries the probe; the rest go to the secondary meanwhile.
            burst: list[Response] = await asyncio.gather(
                *(client.request(make("burst", i), timeout=30) for i in range(BURST))
            )
            await health.wait_for(lambda _: any(e.state == "closed" for e in health.of("openai")), 10)
            half_open, closed = health.of("openai")[1:3]
            probes = _calls(emu, "openai", since=half_open.ts.timestamp(), until=closed.ts.timestamp())
            calls_open_to_close = _calls(emu, "openai", since=opened.ts.timestamp(), until=closed.ts.timestamp())

            # 4. Closed: the primary takes traffic again.
            after = [await client.request(make("after", i), timeout=30) for i in range(3)]

    print(
        f"\nbreaker: calls before open={calls_before_open} (consecutive_failures={opened.consecutive_failures}), "
        f"calls while open={calls_while_open}, calls while half-open={probes}, calls open->closed="
        f"{calls_open_to_close}; burst of {BURST}: {sum(r.provider == 'openai' for r in burst)} served by openai, "
        f"{sum(r.provider == 'azure' for r in burst)} by azure; "
        f"health={health.transitions()}"
    )
    assert all(r.status == "ok" and r.provider == "azure" for r in failing)
    assert (opened.previous_state, opened.state) == ("closed", "open")
    assert 1 <= calls_before_open <= FAILURES and opened.consecutive_failures == calls_before_open
    assert calls_failing == calls_before_open  # nothing reached the primary once its circuit was open
    assert calls_while_open == 0
    assert [(e.previous_state, e.state) for e in health.of("openai")[:3]] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert probes == 1 and calls_open_to_close == 1  # exactly one call reached the recovering provider
    assert all(r.status == "ok" for r in burst)
    assert sum(r.provider == "openai" for r in burst) >= 1  # the probe's request was answered by the primary
    assert all(r.status == "ok" and r.provider == "openai" for r in after)
    assert len(health.of("openai")) == 3  # no further transitions
