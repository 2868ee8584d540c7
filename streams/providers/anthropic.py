"""Anthropic Messages API: ``POST {base_url}/messages`` (base_url ends in ``/v1``).

Differences from the OpenAI format that this adapter absorbs:

- the system prompt travels apart (top-level ``system``), and ``messages`` must alternate
  user/assistant starting with a user turn (consecutive turns of one role are merged);
- ``max_tokens`` is required: the request's value, else ``default_max_tokens``;
- auth is ``x-api-key`` plus an ``anthropic-version`` header (``spec.api_version`` or 2023-06-01);
- usage is ``input_tokens``/``output_tokens``; a stream reports input tokens in ``message_start``
  and the (cumulative) output tokens in ``message_delta``;
- a stream is SSE with typed events (message_start, content_block_start, content_block_delta,
  content_block_stop, message_delta, message_stop, ping) and may carry an ``error`` event
  (e.g. ``overloaded_error``) after HTTP 200, which is translated like the matching status.
- Anthropic serves no embeddings: ``embed`` raises ``BadRequest``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from schemas.request import Request
from schemas.response import TokenUsage
from streams.catalog import ProviderSpec
from streams.errors import BadRequest, ContentFiltered, MalformedProviderResponse
from streams.providers.base import Completion, Embeddings, StreamDelta, StreamEnd, StreamEvent
from streams.providers.http import (
    REQUEST_ID_HEADER,
    client_timeout,
    guard_stream,
    iter_sse,
    loads_json,
    map_exceptions,
    new_session,
    raise_for_status,
    raise_stream_error,
    send,
)

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

# Anthropic stop reasons in the OpenAI vocabulary the rest of aifleet uses.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def to_messages_body(request: Request, model: str, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    """The Messages API body for a request: system apart, alternating turns, max_tokens set."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for m in request.messages or []:
        if m.role == "system":
            system.append(m.content)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": role, "content": m.content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(continue)"})
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens or max_tokens, "messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if stream:
        body["stream"] = True
    return body


class AnthropicProvider:
    """An adapter for the Anthropic Messages API."""

    def __init__(
        self,
        name: str,
        spec: ProviderSpec,
        api_key: SecretStr | None,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        self.name = name
        self.spec = spec
        self._api_key = api_key
        self.version = spec.api_version or DEFAULT_VERSION
        self.default_max_tokens = default_max_tokens
        self._timeout = client_timeout(spec.timeouts)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    def _url(self) -> str:
        return f"{self.spec.base_url.rstrip('/')}/messages"

    def _headers(self, request: Request) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "anthropic-version": self.version,
            REQUEST_ID_HEADER: request.request_id,
        }
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.get_secret_value()
        return headers

    def _body(self, request: Request, model: str, *, stream: bool) -> dict[str, Any]:
        return to_messages_body(request, model, self.default_max_tokens, stream=stream)

    async def complete(self, request: Request, model: str) -> Completion:
        with map_exceptions(self.name):
            async with await send(
                self.name,
                self.session,
                self._url(),
                data=orjson.dumps(self._body(request, model, stream=False)),
                headers=self._headers(request),
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise_for_status(self.name, resp.status, resp.headers, raw)
                doc = loads_json(self.name, raw)
            if doc.get("type") == "error":
                raise_stream_error(self.name, doc.get("error"))
            blocks = doc["content"]
            if not isinstance(blocks, list):
                raise MalformedProviderResponse(f"{self.name}: content is not a list", provider=self.name)
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
            stop = doc.get("stop_reason")
            if stop == "refusal" and not text:
                raise ContentFiltered(f"{self.name} refused the request", provider=self.name)
            usage = doc["usage"]
            return Completion(
                text=text,
                model=str(doc.get("model", model)),
                usage=TokenUsage(input_tokens=int(usage["input_tokens"]), output_tokens=int(usage["output_tokens"])),
                finish_reason=_FINISH.get(stop, stop),
            )

    def stream(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        return guard_stream(self.name, self._stream_events(request, model))

    async def _stream_events(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        input_tokens: int | None = None
        output_tokens: int | None = None
        stop: str | None = None
        served_model = model
        stopped = False
        async with await send(
            self.name,
            self.session,
            self._url(),
            data=orjson.dumps(self._body(request, model, stream=True)),
            headers=self._headers(request),
            timeout=self._timeout,
        ) as resp:
            if resp.status >= 300:
                raise_for_status(self.name, resp.status, resp.headers, await resp.read())
            async for event, data in iter_sse(resp.content):
                doc = loads_json(self.name, data.encode())
                kind = event or doc.get("type")
                if kind == "error":
                    raise_stream_error(self.name, doc.get("error"))
                if kind == "message_start":
                    message = doc["message"]
                    served_model = str(message.get("model") or model)
                    usage = message.get("usage") or {}
                    input_tokens = int(usage.get("input_tokens", 0))
                    output_tokens = int(usage.get("output_tokens", 0))
                elif kind == "content_block_delta":
                    delta = doc["delta"]
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield StreamDelta(delta["text"])
                elif kind == "message_delta":
                    stop = (doc.get("delta") or {}).get("stop_reason") or stop
                    usage = doc.get("usage") or {}
                    if "output_tokens" in usage:
                        output_tokens = int(usage["output_tokens"])
                    if usage.get("input_tokens") is not None:
                        input_tokens = int(usage["input_tokens"])
                elif kind == "message_stop":
                    stopped = True
                    break
        if not stopped:
            raise MalformedProviderResponse(f"{self.name} stream ended without message_stop", provider=self.name)
        if input_tokens is None or output_tokens is None:
            raise MalformedProviderResponse(f"{self.name} stream carried no usage", provider=self.name)
        yield StreamEnd(
            model=served_model,
            usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
            finish_reason=_FINISH.get(stop or "", stop),
        )

    async def embed(self, request: Request, model: str) -> Embeddings:
        raise BadRequest(f"{self.name} (Anthropic) serves no embeddings", provider=self.name)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
