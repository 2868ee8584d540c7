"""The provider emulator: speaks the providers' real wire formats on loopback.

Routes (``{p}`` is the provider's name in the catalog, so calls are counted per provider):

    POST /{p}/v1/chat/completions                          OpenAI Chat Completions, JSON or SSE (stream=true)
    POST /{p}/v1/embeddings                                OpenAI Embeddings
    POST /{p}/openai/deployments/{d}/chat/completions      Azure OpenAI (?api-version=..., deployment = model)
    POST /{p}/openai/deployments/{d}/embeddings            Azure OpenAI embeddings
    POST /{p}/v1/messages                                  Anthropic Messages, JSON or SSE (stream=true)
    POST /{p}/api/chat                                     Ollama chat, JSON or NDJSON (stream defaults to true)
    POST /{p}/api/embed                                    Ollama embeddings
    GET  /_emulator/stats                                  calls (and reported tokens) by provider, in total, time
                                                           spent; calls and successful answers by request id
    GET  /_emulator/calls?since=T&until=T                  calls by provider that arrived between two wall-clock times
    POST /_emulator/profile/{p}                            set a provider's FaultProfile (JSON body)
    POST /_emulator/reset                                  zero the counters and clear every profile
    GET  /healthz

Answers are deterministic (``infra.emulator.answers``); faults come from each provider's profile and
are rendered in each route's own wire format (error bodies, in-stream error events, 429 headers).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from infra.emulator.answers import answer_for, count_tokens, embedding_for, split_stream
from infra.emulator.faults import Fault, FaultProfile


@dataclass
class EmulatorState:
    """Counters and fault profiles, shared by every route."""

    seed: int = 0
    default_latency_ms: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    profile_calls: Counter[str] = field(default_factory=Counter)
    calls_by_request: Counter[str] = field(default_factory=Counter)
    ok_calls_by_request: Counter[str] = field(default_factory=Counter)
    input_tokens: Counter[str] = field(default_factory=Counter)
    output_tokens: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0
    call_times: dict[str, deque[float]] = field(default_factory=dict)
    call_walls: dict[str, deque[float]] = field(default_factory=dict)
    profiles: dict[str, FaultProfile] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def profile(self, provider: str) -> FaultProfile:
        return self.profiles.get(provider) or FaultProfile(latency_ms=self.default_latency_ms)

    def set_profile(self, provider: str, profile: FaultProfile) -> None:
        """Install a provider's profile; its ``script`` plays from the next call."""
        self.profiles[provider] = profile
        self.profile_calls[provider] = 0

    def record_call(self, provider: str, request_id: str | None = None) -> None:
        """Count a call, by provider and by request id, and remember when it arrived (the last 200,000 per
        provider: monotonic for windowed rate checks, wall-clock to line calls up with other processes' events)."""
        self.calls[provider] += 1
        if request_id:
            self.calls_by_request[request_id] += 1
        self.call_times.setdefault(provider, deque(maxlen=200_000)).append(time.monotonic())
        self.call_walls.setdefault(provider, deque(maxlen=200_000)).append(time.time())

    def calls_between(self, since: float, until: float) -> dict[str, int]:
        """Calls per provider that arrived in ``[since, until]`` (wall-clock seconds since the epoch)."""
        return {p: sum(1 for t in walls if since <= t <= until) for p, walls in self.call_walls.items()}

    def max_calls_in_window(self, provider: str, window_s: float = 60.0) -> int:
        """The most calls this provider received in any ``window_s`` seconds (a sliding window)."""
        times = self.call_times.get(provider) or deque()
        best = start = 0
        for end, t in enumerate(times):
            while t - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def bill(self, provider: str, input_tokens: int, output_tokens: int, request_id: str | None = None) -> None:
        """Count a successful answer (a reply that delivered its usage): its tokens, and its request id."""
        self.input_tokens[provider] += input_tokens
        self.output_tokens[provider] += output_tokens
        if request_id:
            self.ok_calls_by_request[request_id] += 1

    def clear(self) -> None:
        """Zero every counter and clear every profile (the seeded draws start over)."""
        for counter in (
            self.calls,
            self.profile_calls,
            self.calls_by_request,
            self.ok_calls_by_request,
            self.input_tokens,
            self.output_tokens,
        ):
            counter.clear()
        self.call_times.clear()
        self.call_walls.clear()
        self.profiles.clear()
        self.busy_s = 0.0
        self.rng.seed(self.seed)


STATE = web.AppKey("state", EmulatorState)
REQUEST_ID_HEADER = "X-Aifleet-Request-Id"


def _request_id(request: web.Request) -> str | None:
    """The gateway's request id, sent with every call (how calls are counted per request)."""
    return request.headers.get(REQUEST_ID_HEADER)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers)


def _openai_error(status: int, message: str, code: str) -> web.Response:
    return _json({"error": {"message": message, "type": code, "code": code}}, status=status)


# -- wire formats ------------------------------------------------------------------------------

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_CODES = {400: "invalid_request_error", 401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}


def _openai_error_doc(status: int, message: str) -> dict[str, Any]:
    code = _OPENAI_CODES.get(status, "server_error")
    return {"error": {"message": message, "type": code, "code": code}}


def _anthropic_error_doc(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status < 529 else "overloaded_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _ollama_error_doc(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


@dataclass(frozen=True)
class Wire:
    """How one wire format renders errors and frames streams."""

    name: str
    error_doc: Callable[[int, str], dict[str, Any]]
    malformed: bytes
    stream_content_type: str
    context_error: Callable[[int, int], dict[str, Any]]

    def error(self, status: int, message: str) -> web.Response:
        return _json(self.error_doc(status, message), status=status)


OPENAI = Wire(
    name="openai",
    error_doc=_openai_error_doc,
    malformed=b'{"choices": [ {"mess',
    stream_content_type="text/event-stream",
    context_error=lambda n, w: {
        "error": {
            "message": f"This model's maximum context length is {w} tokens. However, your messages resulted in {n} "
            "tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    },
)
AZURE = Wire(
    name="azure",
    error_doc=_openai_error_doc,
    malformed=b'{"choices": [ {"mess',
    stream_content_type="text/event-stream",
    context_error=OPENAI.context_error,
)
ANTHROPIC = Wire(
    name="anthropic",
    error_doc=_anthropic_error_doc,
    malformed=b'{"type": "message", "content": [{"ty',
    stream_content_type="text/event-stream",
    context_error=lambda n, w: _anthropic_error_doc(400, f"prompt is too long: {n} tokens > {w} maximum"),
)
OLLAMA = Wire(
    name="ollama",
    error_doc=_ollama_error_doc,
    malformed=b'{"model": "x", "message": {"cont',
    stream_content_type="application/x-ndjson",
    context_error=lambda n, w: {"error": f"input length {n} exceeds maximum context length {w}"},
)


def _content_filter_reply(wire: Wire) -> web.Response | None:
    """The wire format's answer to a blocked prompt (Anthropic and Ollama answer 200; see the routes)."""
    if wire.name in ("openai", "azure"):
        return _json(
            {
                "error": {
                    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                    "management policy.",
                    "type": None,
                    "param": "prompt",
                    "code": "content_filter",
                }
            },
            status=400,
        )
    return None


def _incorrect_key_message(request: web.Request) -> str:
    """OpenAI's 401 text: it quotes the presented key with the middle masked."""
    key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    shown = f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}" if len(key) > 12 else key
    return (
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )


async def _apply_fault(
    state: EmulatorState, provider: str, request: web.Request, wire: Wire = OPENAI
) -> tuple[web.StreamResponse | None, Fault, float]:
    """Count the call, sleep its latency, and return an error reply if its fault says so."""
    state.record_call(provider, _request_id(request))
    profile = state.profile(provider)
    fault, status = profile.draw(state.rng, state.profile_calls[provider])
    state.profile_calls[provider] += 1
    delay = profile.latency_s(state.rng)
    if delay:
        await asyncio.sleep(delay)
    if fault == "status":
        if status == 401 and wire.name == "openai":  # OpenAI quotes the key it refused, partly masked
            return wire.error(401, _incorrect_key_message(request)), fault, delay
        return wire.error(status, f"emulated HTTP {status}"), fault, delay
    if fault == "rate_limit":
        resp = wire.error(429, "emulated rate limit")
        resp.headers["Retry-After"] = f"{profile.retry_after_s:g}"
        if wire.name == "azure":
            resp.headers["retry-after-ms"] = f"{profile.retry_after_s * 1000:g}"
        return resp, fault, delay
    if fault == "hang":
        await asyncio.sleep(profile.hang_s)
    if fault == "malformed":
        return web.Response(body=wire.malformed, status=200, content_type="application/json"), fault, delay
    return None, fault, delay


def _precheck(state: EmulatorState, provider: str, wire: Wire, prompt: str) -> web.Response | None:
    """Deterministic request checks a provider makes before generating: context window, content filter."""
    profile = state.profile(provider)
    n = count_tokens(prompt)
    if profile.context_window is not None and n > profile.context_window:
        return _json(wire.context_error(n, profile.context_window), status=400)
    if _blocked(profile, prompt):
        return _content_filter_reply(wire)
    return None


def _blocked(profile: FaultProfile, prompt: str) -> bool:
    lowered = prompt.lower()
    return any(w.lower() in lowered for w in profile.blocked_words)


class _Streamer:
    """Writes one streamed reply, applying the stream faults (disconnect, in-stream error)."""

    def __init__(self, request: web.Request, state: EmulatorState, provider: str, fault: Fault, content_type: str):
        self.request = request
        self.state = state
        self.provider = provider
        self.profile = state.profile(provider)
        self.fault = fault
        self.resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})

    async def run(
        self,
        chunks: list[str],
        head: list[bytes],
        delta: Callable[[str], bytes],
        tail: list[bytes],
        error: Callable[[int, str], bytes],
        usage: tuple[int, int],
    ) -> web.StreamResponse:
        await self.resp.prepare(self.request)
        for frame in head:
            await self.resp.write(frame)
        cut = None
        if self.fault == "disconnect":
            cut = self.profile.disconnect_after if self.profile.disconnect_after is not None else len(chunks) // 2
        err_at = self.profile.stream_error_after if self.fault == "stream_error" else None
        for i, piece in enumerate([*chunks, None]):
            if cut is not None and i == min(cut, len(chunks)):
                if self.request.transport is not None:
                    self.request.transport.close()
                return self.resp
            if err_at is not None and i == min(err_at, len(chunks)):
                await self.resp.write(error(self.profile.stream_error_status, "emulated in-stream error"))
                await self.resp.write_eof()
                return self.resp
            if piece is None:
                break
            if self.profile.chunk_delay_ms:
                await asyncio.sleep(self.profile.chunk_delay_ms / 1000.0)
            await self.resp.write(delta(piece))
        for frame in tail:
            await self.resp.write(frame)
        self.state.bill(self.provider, *usage, _request_id(self.request))
        await self.resp.write_eof()
        return self.resp


def _sse(doc: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(doc) + b"\n\n"


# -- OpenAI and Azure --------------------------------------------------------------------------


async def _openai_chat(request: web.Request, wire: Wire, model_override: str | None = None) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    started = time.perf_counter()
    try:
        body = orjson.loads(await request.read())
        messages = body["messages"]
        model = model_override or body["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _openai_error(400, "request body must be JSON with model and messages", "invalid_request_error")
    error, fault, _ = await _apply_fault(state, provider, request, wire)
    if error is not None:
        state.busy_s += time.perf_counter() - started
        return error
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    rejected = _precheck(state, provider, wire, prompt)
    if rejected is not None:
        return rejected
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
        state.bill(provider, usage["prompt_tokens"], usage["completion_tokens"], _request_id(request))
        state.busy_s += time.perf_counter() - started
        return _json(doc, headers={"x-emulator-ms": f"{(time.perf_counter() - started) * 1000:.3f}"})

    base = {
        "id": f"chatcmpl-{state.calls[provider]}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    tail = [_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})]
    if (body.get("stream_options") or {}).get("include_usage"):
        tail.append(_sse({**base, "choices": [], "usage": usage}))
    tail.append(b"data: [DONE]\n\n")
    streamer = _Streamer(request, state, provider, fault, wire.stream_content_type)
    resp = await streamer.run(
        split_stream(text),
        head=[_sse(first)],
        delta=lambda piece: _sse(
            {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        ),
        tail=tail,
        error=lambda status, msg: _sse(_openai_error_doc(status, msg)),
        usage=(usage["prompt_tokens"], usage["completion_tokens"]),
    )
    state.busy_s += time.perf_counter() - started
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai_chat(request, OPENAI)


async def _openai_embeddings(request: web.Request, wire: Wire, model_override: str | None = None) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    try:
        body = orjson.loads(await request.read())
        inputs = body["input"]
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _openai_error(400, "request body must be JSON with input", "invalid_request_error")
    error, _, _ = await _apply_fault(state, provider, request, wire)
    if error is not None:
        return error
    data = [{"object": "embedding", "index": i, "embedding": embedding_for(t)} for i, t in enumerate(inputs)]
    tokens = sum(count_tokens(t) for t in inputs)
    state.bill(provider, tokens, 0, _request_id(request))
    return _json(
        {
            "object": "list",
            "data": data,
            "model": model_override or body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _openai_embeddings(request, OPENAI)


def _azure_checked(request: web.Request) -> web.Response | None:
    if not request.query.get("api-version"):
        return _openai_error(404, "Resource not found: api-version query parameter is required", "404")
    return None


async def azure_chat(request: web.Request) -> web.StreamResponse:
    rejected = _azure_checked(request)
    if rejected is not None:
        return rejected
    return await _openai_chat(request, AZURE, request.match_info["deployment"])


async def azure_embeddings(request: web.Request) -> web.StreamResponse:
    rejected = _azure_checked(request)
    if rejected is not None:
        return rejected
    return await _openai_embeddings(request, AZURE, request.match_info["deployment"])


# -- Anthropic ---------------------------------------------------------------------------------


def _anthropic_prompt(body: dict[str, Any]) -> str:
    """The prompt text the answer depends on: the system prompt then every turn's text."""
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts.extend(str(b.get("text", "")) for b in system)
    for m in body["messages"]:
        content = m["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(str(b.get("text", "")) for b in content if b.get("type") == "text")
    return "\n".join(parts)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    started = time.perf_counter()
    try:
        body = orjson.loads(await request.read())
        model = body["model"]
        prompt = _anthropic_prompt(body)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return ANTHROPIC.error(400, "messages: body must be JSON with model and messages")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return ANTHROPIC.error(400, "max_tokens: Field required")
    if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
        return ANTHROPIC.error(400, "messages: roles must be user or assistant (system goes in 'system')")
    error, fault, _ = await _apply_fault(state, provider, request, ANTHROPIC)
    if error is not None:
        state.busy_s += time.perf_counter() - started
        return error
    rejected = _precheck(state, provider, ANTHROPIC, prompt)
    if rejected is not None:
        return rejected
    refused = _blocked(state.profile(provider), prompt)
    text = "" if refused else answer_for(model, prompt, body["max_tokens"])
    stop = "refusal" if refused else "end_turn"
    in_tok, out_tok = count_tokens(prompt), (count_tokens(text) if text else 0)
    msg_id = f"msg_{state.calls[provider]:08d}"
    if not body.get("stream"):
        state.bill(provider, in_tok, out_tok, _request_id(request))
        state.busy_s += time.perf_counter() - started
        return _json(
            {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}] if text else [],
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": in_tok, "output_tokens": out_tok},
            }
        )
    start = {
        "type": "message_start",
        "message": {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": in_tok, "output_tokens": 1},
        },
    }
    head = [
        _sse(start, "message_start"),
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        _sse({"type": "ping"}, "ping"),
    ]
    tail = [
        _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out_tok},
            },
            "message_delta",
        ),
        _sse({"type": "message_stop"}, "message_stop"),
    ]
    streamer = _Streamer(request, state, provider, fault, ANTHROPIC.stream_content_type)
    resp = await streamer.run(
        split_stream(text) if text else [],
        head=head,
        delta=lambda piece: _sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            "content_block_delta",
        ),
        tail=tail,
        error=lambda status, msg: _sse(_anthropic_error_doc(status, msg), "error"),
        usage=(in_tok, out_tok),
    )
    state.busy_s += time.perf_counter() - started
    return resp


# -- Ollama ------------------------------------------------------------------------------------


def _ollama_ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


async def ollama_chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    started = time.perf_counter()
    try:
        body = orjson.loads(await request.read())
        model = body["model"]
        prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return OLLAMA.error(400, "invalid request: model and messages are required")
    error, fault, _ = await _apply_fault(state, provider, request, OLLAMA)
    if error is not None:
        state.busy_s += time.perf_counter() - started
        return error
    rejected = _precheck(state, provider, OLLAMA, prompt)
    if rejected is not None:
        return rejected
    options = body.get("options") or {}
    text = answer_for(model, prompt, options.get("num_predict"))
    in_tok, out_tok = count_tokens(prompt), count_tokens(text)
    final = {
        "model": model,
        "created_at": _ollama_ts(),
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "prompt_eval_count": in_tok,
        "eval_count": out_tok,
    }
    if body.get("stream", True) is False:
        state.bill(provider, in_tok, out_tok, _request_id(request))
        state.busy_s += time.perf_counter() - started
        return _json({**final, "message": {"role": "assistant", "content": text}})

    def line(doc: Any) -> bytes:
        return orjson.dumps(doc) + b"\n"

    streamer = _Streamer(request, state, provider, fault, OLLAMA.stream_content_type)
    resp = await streamer.run(
        split_stream(text),
        head=[],
        delta=lambda piece: line(
            {
                "model": model,
                "created_at": _ollama_ts(),
                "message": {"role": "assistant", "content": piece},
                "done": False,
            }
        ),
        tail=[line(final)],
        error=lambda status, msg: line(_ollama_error_doc(status, msg)),
        usage=(in_tok, out_tok),
    )
    state.busy_s += time.perf_counter() - started
    return resp


async def ollama_embed(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    provider = request.match_info["provider"]
    try:
        body = orjson.loads(await request.read())
        inputs = body["input"]
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        model = body["model"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return OLLAMA.error(400, "invalid request: model and input are required")
    error, _, _ = await _apply_fault(state, provider, request, OLLAMA)
    if error is not None:
        return error
    tokens = sum(count_tokens(t) for t in inputs)
    state.bill(provider, tokens, 0, _request_id(request))
    return _json({"model": model, "embeddings": [embedding_for(t) for t in inputs], "prompt_eval_count": tokens})


# -- control -----------------------------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dup = sum(c - 1 for c in state.calls_by_request.values() if c > 1)
    dup_ok = sum(c - 1 for c in state.ok_calls_by_request.values() if c > 1)
    providers = set(state.input_tokens) | set(state.output_tokens)
    return _json(
        {
            "calls": dict(state.calls),
            "total_calls": sum(state.calls.values()),
            "distinct_requests": len(state.calls_by_request),
            "repeat_calls": dup,
            "calls_by_request": dict(state.calls_by_request),
            "ok_calls": sum(state.ok_calls_by_request.values()),
            "repeat_ok_calls": dup_ok,
            "ok_calls_by_request": dict(state.ok_calls_by_request),
            "usage": {
                p: {"input_tokens": state.input_tokens[p], "output_tokens": state.output_tokens[p]} for p in providers
            },
            "busy_s": state.busy_s,
            "max_calls_per_60s": {p: state.max_calls_in_window(p) for p in state.call_times},
        }
    )


async def calls_between(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        since = float(request.query.get("since", "0"))
        until = float(request.query.get("until", "inf"))
    except ValueError:
        return _json({"error": "since and until are wall-clock seconds since the epoch"}, status=400)
    return _json({"since": since, "until": until, "calls": state.calls_between(since, until)})


async def set_profile(request: web.Request) -> web.Response:
    state = request.app[STATE]
    profile = FaultProfile.model_validate_json(await request.read())
    state.set_profile(request.match_info["provider"], profile)
    return _json({"ok": True, "provider": request.match_info["provider"], "profile": profile.model_dump(mode="json")})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].clear()
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
    app.router.add_post("/{provider}/openai/deployments/{deployment}/chat/completions", azure_chat)
    app.router.add_post("/{provider}/openai/deployments/{deployment}/embeddings", azure_embeddings)
    app.router.add_post("/{provider}/v1/messages", anthropic_messages)
    app.router.add_post("/{provider}/api/chat", ollama_chat)
    app.router.add_post("/{provider}/api/embed", ollama_embed)
    app.router.add_get("/_emulator/stats", stats)
    app.router.add_get("/_emulator/calls", calls_between)
    app.router.add_post("/_emulator/profile/{provider}", set_profile)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_get("/healthz", healthz)
    return app


def serve(host: str, port: int, latency_ms: float = 0.0, seed: int = 0) -> None:
    """Run the emulator until interrupted."""
    web.run_app(create_app(latency_ms, seed), host=host, port=port, print=None, access_log=None)
