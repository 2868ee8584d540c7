"""The emulator's routes and wire formats, exercised with a plain HTTP client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from infra.emulator.faults import FaultProfile
from infra.emulator.testing import RunningEmulator, running_emulator


@pytest.fixture(scope="module")
async def emu() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as e:
        yield e


@pytest.fixture
async def http(emu: RunningEmulator) -> AsyncIterator[aiohttp.ClientSession]:
    emu.reset()
    async with aiohttp.ClientSession(base_url=emu.url + "/") as s:
        yield s


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi there"}]}


async def test_openai_routes_and_control_endpoints_still_work(http: aiohttp.ClientSession) -> None:
    async with http.post("openai/v1/chat/completions", json=CHAT, headers={"X-Aifleet-Request-Id": "r1"}) as r:
        assert r.status == 200 and (await r.json())["choices"][0]["message"]["content"].startswith("Echo:")
    async with http.post("openai/v1/chat/completions", json=CHAT, headers={"X-Aifleet-Request-Id": "r1"}) as r:
        assert r.status == 200
    async with http.post("openai/v1/embeddings", json={"model": "e", "input": "x"}) as r:
        assert len((await r.json())["data"]) == 1
    async with http.post("_emulator/profile/openai", data=FaultProfile(down=True).model_dump_json()) as r:
        assert r.status == 200
    async with http.post("openai/v1/chat/completions", json=CHAT) as r:
        assert r.status == 503
    async with http.get("_emulator/stats") as r:
        stats = await r.json()
    assert stats["calls"] == {"openai": 4}
    assert stats["repeat_calls"] == 1 and stats["calls_by_request"] == {"r1": 2}
    assert stats["usage"]["openai"]["input_tokens"] > 0
    async with http.post("_emulator/reset") as r:
        assert r.status == 200
    async with http.get("_emulator/stats") as r:
        assert (await r.json())["total_calls"] == 0


async def test_successful_answers_are_counted_per_request_and_calls_by_arrival_time(
    http: aiohttp.ClientSession, emu: RunningEmulator
) -> None:
    t0 = time.time()
    emu.set_profile("openai", script=["503", "ok", "ok", "stream_error"])
    for _ in range(3):  # r1 fails, then is answered twice: one needed answer, one duplicate
        async with http.post("openai/v1/chat/completions", json=CHAT, headers={"X-Aifleet-Request-Id": "r1"}) as r:
            await r.read()
    for rid in ("r2", "r3"):  # a stream that breaks is no answer; one that completes is
        body = {**CHAT, "stream": True}
        async with http.post("openai/v1/chat/completions", json=body, headers={"X-Aifleet-Request-Id": rid}) as r:
            await r.read()
    t1 = time.time()
    async with http.post("anthropic/v1/messages", json={**CHAT, "max_tokens": 8}) as r:
        assert r.status == 200
    async with http.get("_emulator/stats") as r:
        stats = await r.json()
    assert stats["calls_by_request"] == {"r1": 3, "r2": 1, "r3": 1}
    assert stats["ok_calls_by_request"] == {"r1": 2, "r3": 1}
    assert stats["ok_calls"] == 3 and stats["repeat_ok_calls"] == 1
    async with http.get("_emulator/calls", params={"since": str(t0), "until": str(t1)}) as r:
        assert (await r.json())["calls"] == {"openai": 5, "anthropic": 0}
    async with http.get("_emulator/calls", params={"since": str(t1)}) as r:
        assert (await r.json())["calls"] == {"openai": 0, "anthropic": 1}


async def test_azure_needs_api_version_and_uses_the_deployment(http: aiohttp.ClientSession) -> None:
    async with http.post("azure/openai/deployments/gpt-4o/chat/completions", json=CHAT) as r:
        assert r.status == 404
    url = "azure/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    async with http.post(url, json={**CHAT, "model": "ignored"}) as r:
        assert (await r.json())["model"] == "gpt-4o"


async def test_azure_429_sends_retry_after_ms(http: aiohttp.ClientSession, emu: RunningEmulator) -> None:
    emu.set_profile("azure", rate_limit_rate=1.0, retry_after_s=2.5)
    async with http.post("azure/openai/deployments/d/chat/completions?api-version=1", json=CHAT) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "2.5" and r.headers["retry-after-ms"] == "2500"


async def test_anthropic_wire_format(http: aiohttp.ClientSession, emu: RunningEmulator) -> None:
    async with http.post("anthropic/v1/messages", json=CHAT) as r:
        assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_request_error"  # no max_tokens
    body = {**CHAT, "max_tokens": 50, "system": "be brief"}
    async with http.post("anthropic/v1/messages", json=body) as r:
        doc = await r.json()
    assert doc["type"] == "message" and doc["content"][0]["type"] == "text"
    assert set(doc["usage"]) == {"input_tokens", "output_tokens"}
    async with http.post("anthropic/v1/messages", json={**body, "stream": True}) as r:
        raw = (await r.read()).decode()
    kinds = [line.removeprefix("event: ") for line in raw.splitlines() if line.startswith("event: ")]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    emu.set_profile("anthropic", error_rates={529: 1.0})
    async with http.post("anthropic/v1/messages", json=body) as r:
        assert r.status == 529 and (await r.json())["error"]["type"] == "overloaded_error"


async def test_ollama_streams_ndjson_by_default(http: aiohttp.ClientSession) -> None:
    async with http.post("ollama/api/chat", json=CHAT) as r:
        assert r.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in (await r.read()).splitlines() if line]
    assert all(not d["done"] for d in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["prompt_eval_count"] > 0 and lines[-1]["eval_count"] > 0
    async with http.post("ollama/api/chat", json={**CHAT, "stream": False}) as r:
        doc = await r.json()
    assert doc["done"] and doc["message"]["content"].startswith("Echo:")
    async with http.post("ollama/api/embed", json={"model": "e", "input": ["a", "b"]}) as r:
        assert len((await r.json())["embeddings"]) == 2


async def test_script_plays_in_order_then_random_draws_resume(
    http: aiohttp.ClientSession, emu: RunningEmulator
) -> None:
    emu.set_profile("vllm", script=["503", "rate_limit", "ok"])
    statuses = []
    for _ in range(4):
        async with http.post("vllm/v1/chat/completions", json=CHAT) as r:
            statuses.append(r.status)
    assert statuses == [503, 429, 200, 200]


def test_profile_rejects_unknown_scripted_faults() -> None:
    import random

    with pytest.raises(ValueError, match="unknown scripted fault"):
        FaultProfile(script=["explode"]).draw(random.Random(0))
