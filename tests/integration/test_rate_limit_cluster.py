"""Rate limits hold cluster-wide: two workers under a 600 rpm provider limit never send more than 600 calls
in any 60 s window, and requests over the limit end in a typed error instead of hanging."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from schemas.request import Message, Request
from schemas.response import Response
from streams.bench import emulator_stats
from streams.client import AifleetClient, ClientTimeout
from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LIMITED = Path(__file__).resolve().parent.parent / "fixtures" / "ratelimit.toml"


async def test_two_workers_stay_within_600_rpm(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(LIMITED))
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]
    rate_per_s, seconds = 14, 75  # 840 requests a minute offered against a 600 rpm limit, for 75 s
    answers: list[Response] = []
    lost = 0
    with running_stack(env, workers=2) as stack:
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:

            async def one(i: int) -> None:
                nonlocal lost
                req = Request(
                    request_id=f"rl-{run}-{i}",
                    tenant="bench",
                    deadline_ms=5000,
                    messages=[Message(role="user", content=f"limited {i}")],
                )
                try:
                    answers.append(await client.request(req, timeout=60))
                except ClientTimeout:
                    lost += 1

            tasks = []
            for i in range(rate_per_s * seconds):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(1 / rate_per_s)
            await asyncio.gather(*tasks)
        stats = emulator_stats(stack.emulator_url)
    assert stats is not None
    peak = stats["max_calls_per_60s"]["openai"]
    ok = sum(a.status == "ok" for a in answers)
    reasons = {a.error.reason.value for a in answers if a.error}
    print(
        f"\n600 rpm limit, 2 workers, {rate_per_s * seconds} requests over {seconds}s: provider calls="
        f"{stats['total_calls']}, peak calls in any 60 s window={peak}, ok={ok}, refused={len(answers) - ok} "
        f"{reasons}, lost={lost}"
    )
    assert lost == 0
    assert peak <= 600
    assert ok >= 600  # the limit is used, not just respected
    assert reasons <= {"rate_limited", "deadline_exceeded"}  # a saturated limiter is rate_limited, not no_provider
