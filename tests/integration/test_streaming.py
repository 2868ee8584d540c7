"""Streaming through Kafka: ordered chunks, exact usage, failover before the first chunk, typed error after."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from infra.emulator.answers import answer_for, count_tokens
from schemas.chunk import StreamChunk
from schemas.request import Message, Request
from schemas.response import Response
from streams.client import AifleetClient
from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FAULTS = Path(__file__).resolve().parent.parent / "fixtures" / "faults.toml"
PROMPT = "Explain consumer groups in a few words."


def _request(stream: bool) -> Request:
    return Request(
        request_id=f"s-{uuid.uuid4().hex[:10]}",
        tenant="bench",
        stream=stream,
        messages=[Message(role="user", content=PROMPT)],
    )


async def _collect(client: AifleetClient, request: Request) -> tuple[list[StreamChunk], Response]:
    chunks: list[StreamChunk] = []
    async for item in client.stream(request, timeout=60):
        if isinstance(item, Response):
            return chunks, item
        chunks.append(item)
    raise AssertionError("the stream ended without its closing response")


def _profile(emulator: str, provider: str, **profile: object) -> None:
    httpx.post(f"{emulator}/_emulator/profile/{provider}", json=profile, timeout=5).raise_for_status()


async def test_streams_through_kafka(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_CONFIG_FILE=str(FAULTS))
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    expected = answer_for("gpt-4o-mini", PROMPT, None)
    with running_stack(env, workers=1) as stack:
        assert stack.emulator_url
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            # 1. a healthy stream: ordered chunks that reassemble to the non-streamed answer, exact usage
            whole = await client.request(_request(stream=False), timeout=60)
            chunks, closing = await _collect(client, _request(stream=True))
            assert whole.status == "ok" and whole.output == expected
            assert closing.status == "ok"
            deltas = [c for c in chunks if not c.final]
            assert [c.seq for c in chunks] == list(range(len(chunks)))
            assert chunks[-1].final and chunks[-1].error is None
            assert "".join(c.delta for c in deltas) == expected == closing.output
            assert closing.usage.input_tokens == count_tokens(PROMPT)
            assert closing.usage.output_tokens == count_tokens(expected)
            assert closing.usage == whole.usage and closing.cost_usd == whole.cost_usd

            # 2. the primary fails before its first chunk: the secondary streams, the client sees no error
            _profile(stack.emulator_url, "openai", error_rates={"503": 1.0})
            chunks, closing = await _collect(client, _request(stream=True))
            assert closing.status == "ok" and closing.provider == "azure"
            assert "".join(c.delta for c in chunks if not c.final) == expected
            assert all(c.error is None for c in chunks)

            # 3. the stream breaks after chunks went out: a typed error chunk closes it, then an error response
            _profile(stack.emulator_url, "openai", disconnect_rate=1.0, disconnect_after=3)
            _profile(stack.emulator_url, "azure", disconnect_rate=1.0, disconnect_after=3)
            chunks, closing = await _collect(client, _request(stream=True))
            assert closing.status == "error" and closing.error is not None
            assert closing.error.reason.value == "stream_interrupted"
            assert chunks and chunks[-1].final and chunks[-1].error is not None
            assert chunks[-1].error.reason.value == "stream_interrupted"
            assert [c.seq for c in chunks] == list(range(len(chunks)))
            assert 0 < len(chunks) - 1 < len(expected.split(" "))  # a truncated answer never looks complete
