"""The provider emulator: speaks the providers' real wire formats on loopback.

Routes (``{p}`` is the provider's name in the catalog, so calls are counted per provider):

    POST /{p}/v1/chat/completions      OpenAI Chat Completions, JSON or SSE (stream=true)
    POST /{p}/v1/embeddings            OpenAI Embeddings
    GET  /_emulator/stats              calls served, by provider and in total, and time spent
    POST /_emulator/profile/{p}        set a provider's FaultProfile (JSON body)
    POST /_emulator/reset              zero the counters and clear every profile
    GET  /healthz

Answers are deterministic (``infra.emulator.answers``); faults come from each provider's profile.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from infra.emulator.answers import answer_for, count_tokens, embedding_for, split_stream
from infra.emulator.faults import FaultProfile


@dataclass
class EmulatorState:
    """Counters and fault profiles, shared by every route."""

    seed: int = 0
    default_latency_ms: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    calls_by_request: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0
    profiles: dict[str, FaultProfile] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def profile(self, provider: str) -> FaultProfile:
        return self.profiles.get(provider) or FaultProfile(latency_ms=self.default_latency_ms)


STATE = web.AppKey("state", EmulatorState)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers)


def _openai_error(status: int, message: str, code: str) -> web.Response:
    return _json({"error": {"message": message, "type": code, "code": code}}, status=status)


async def _apply_fault(
    state: EmulatorState, provider: str, request: web.Request
) -> tuple[web.StreamResponse | None, str, float]:
    """Count the call, sleep its latency, and return an error reply if its fault says so."""
    state.calls[provider] += 1
    req_id = request.headers.get("X-Aifleet-Request-Id")
    if req_id:
        state.calls_by_request[req_id] += 1
    profile = state.profile(provider)
    fault, status = profile.draw(state.rng)
    delay = profile.latency_s(state.rng)
    if delay:
        await asyncio.sleep(delay)
    if fault == "status":
        return _openai_error(status, f"emulated HTTP {status}", "server_error"), fault, delay
    if fault == "rate_limit":
        resp = _openai_error(429, "emulated rate limit", "rate_limit_exceeded")
        resp.headers["Retry-After"] = f"{profile.retry_after_s:g}"
        return resp, fault, delay
    if fault == "hang":
        await asyncio.sleep(profile.hang_s)
    if fault == "malformed":
        return web.Response(body=b'{"choices": [ {"mess', status=200, content_type="application/json"), fault, delay
    return None, fault, delay


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    started = time.perf_counter()
    try:
        body = orjson.loads(await request.read())
        messages = body["messages"]
        model = body["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _openai_error(400, "request body must be JSON with model and messages", "invalid_request_error")
    error, fault, _ = await _apply_fault(state, provider, request)
    if error is not None:
        state.busy_s += time.perf_counter() - started
        return error
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    text = answer_for(model, prompt, body.get("max_tokens"))
    usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": count_tokens(text)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    created = int(time.time())
    if not body.get("stream"):
        doc = {
            "id": f"chatcmpl-{state.calls[provider]}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }
        state.busy_s += time.perf_counter() - started
        return _json(doc, headers={"x-emulator-ms": f"{(time.perf_counter() - started) * 1000:.3f}"})

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    chunks = split_stream(text)
    cut_after = len(chunks) // 2 if fault == "disconnect" else None
    base = {
        "id": f"chatcmpl-{state.calls[provider]}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    await resp.write(b"data: " + orjson.dumps(first) + b"\n\n")
    for i, piece in enumerate(chunks):
        if cut_after is not None and i == cut_after:
            state.busy_s += time.perf_counter() - started
            request.transport.close() if request.transport else None
            return resp
        doc = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(doc) + b"\n\n")
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await resp.write(b"data: " + orjson.dumps(last) + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    state.busy_s += time.perf_counter() - started
    return resp


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    try:
        body = orjson.loads(await request.read())
        inputs = body["input"]
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _openai_error(400, "request body must be JSON with input", "invalid_request_error")
    error, _, _ = await _apply_fault(state, provider, request)
    if error is not None:
        return error
    data = [{"object": "embedding", "index": i, "embedding": embedding_for(t)} for i, t in enumerate(inputs)]
    tokens = sum(count_tokens(t) for t in inputs)
    return _json(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dup = sum(c - 1 for c in state.calls_by_request.values() if c > 1)
    return _json(
        {
            "calls": dict(state.calls),
            "total_calls": sum(state.calls.values()),
            "distinct_requests": len(state.calls_by_request),
            "repeat_calls": dup,
            "busy_s": state.busy_s,
        }
    )


async def set_profile(request: web.Request) -> web.Response:
    state = request.app[STATE]
    profile = FaultProfile.model_validate_json(await request.read())
    state.profiles[request.match_info["provider"]] = profile
    return _json({"ok": True, "provider": request.match_info["provider"], "profile": profile.model_dump()})


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.calls.clear()
    state.calls_by_request.clear()
    state.profiles.clear()
    state.busy_s = 0.0
    state.rng.seed(state.seed)
    return _json({"ok": True})


async def healthz(_: web.Request) -> web.Response:
    return _json({"ok": True})


def create_app(latency_ms: float = 0.0, seed: int = 0) -> web.Application:
    """The emulator as an aiohttp application (tests run it in-process, the CLI as a server)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state = EmulatorState(seed=seed, default_latency_ms=latency_ms)
    state.rng.seed(seed)
    app[STATE] = state
    app.router.add_post("/{provider}/v1/chat/completions", chat_completions)
    app.router.add_post("/{provider}/v1/embeddings", embeddings)
    app.router.add_get("/_emulator/stats", stats)
    app.router.add_post("/_emulator/profile/{provider}", set_profile)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_get("/healthz", healthz)
    return app


def serve(host: str, port: int, latency_ms: float = 0.0, seed: int = 0) -> None:
    """Run the emulator until interrupted."""
    web.run_app(create_app(latency_ms, seed), host=host, port=port, print=None, access_log=None)
