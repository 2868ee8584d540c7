"""Ollama's native API: ``POST {base_url}/api/chat`` and ``POST {base_url}/api/embed``.

``base_url`` is the server root (``http://127.0.0.1:11434``). Ollama streams by default, so the
body always says ``stream`` explicitly; a stream is NDJSON (one JSON object a line), the last one
with ``done: true`` and the token counts ``prompt_eval_count`` (input) and ``eval_count`` (output).
``max_tokens``/``temperature`` travel as ``options.num_predict``/``options.temperature``. Errors are
``{"error": "..."}``, as an HTTP status or as a line inside a 200 stream. Ollama leaves out
``prompt_eval_count`` when the whole prompt came from its cache; that counts as 0 input tokens, the
provider's own figure, never an estimate.
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
from streams.errors import MalformedProviderResponse
from streams.providers.base import Completion, Embeddings, StreamDelta, StreamEnd, StreamEvent
from streams.providers.http import (
    REQUEST_ID_HEADER,
    client_timeout,
    guard_stream,
    loads_json,
    map_exceptions,
    new_session,
    raise_for_status,
    raise_stream_error,
    send,
)


def _usage(doc: dict[str, Any]) -> TokenUsage:
    return TokenUsage(
        input_tokens=int(doc.get("prompt_eval_count") or 0), output_tokens=int(doc.get("eval_count") or 0)
    )


class OllamaProvider:
    """An adapter for a local or remote Ollama server."""

    def __init__(self, name: str, spec: ProviderSpec, api_key: SecretStr | None) -> None:
        self.name = name
        self.spec = spec
        self._api_key = api_key  # Ollama has no auth; a key is sent as a bearer token for proxies in front
        self._timeout = client_timeout(spec.timeouts)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    def _url(self, path: str) -> str:
        return f"{self.spec.base_url.rstrip('/')}{path}"

    def _headers(self, request: Request) -> dict[str, str]:
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request.request_id}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    @staticmethod
    def _chat_body(request: Request, model: str, *, stream: bool) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.temperature is not None:
            options["temperature"] = request.temperature
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages or []],
            "stream": stream,
        }
        if options:
            body["options"] = options
        return body

    async def _post(self, path: str, body: dict[str, Any], request: Request) -> Any:
        with map_exceptions(self.name):
            async with await send(
                self.name,
                self.session,
                self._url(path),
                data=orjson.dumps(body),
                headers=self._headers(request),
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise_for_status(self.name, resp.status, resp.headers, raw)
                doc = loads_json(self.name, raw)
            if isinstance(doc, dict) and doc.get("error"):
                raise_stream_error(self.name, doc["error"])
            return doc

    async def complete(self, request: Request, model: str) -> Completion:
        doc = await self._post("/api/chat", self._chat_body(request, model, stream=False), request)
        with map_exceptions(self.name):
            text = doc["message"]["content"]
            if not isinstance(text, str) or not doc.get("done", True):
                raise MalformedProviderResponse(f"{self.name}: message content is not text", provider=self.name)
            return Completion(
                text=text, model=str(doc.get("model", model)), usage=_usage(doc), finish_reason=doc.get("done_reason")
            )

    def stream(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        return guard_stream(self.name, self._stream_events(request, model))

    async def _stream_events(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        async with await send(
            self.name,
            self.session,
            self._url("/api/chat"),
            data=orjson.dumps(self._chat_body(request, model, stream=True)),
            headers=self._headers(request),
            timeout=self._timeout,
        ) as resp:
            if resp.status >= 300:
                raise_for_status(self.name, resp.status, resp.headers, await resp.read())
            async for raw in resp.content:
                line = raw.strip()
                if not line:
                    continue
                doc = loads_json(self.name, line)
                if not isinstance(doc, dict):
                    raise MalformedProviderResponse(
                        f"{self.name} sent a line that is not an object", provider=self.name
                    )
                if doc.get("error"):
                    raise_stream_error(self.name, doc["error"])
                piece = (doc.get("message") or {}).get("content")
                if piece:
                    yield StreamDelta(piece)
                if doc.get("done"):
                    yield StreamEnd(
                        model=str(doc.get("model") or model), usage=_usage(doc), finish_reason=doc.get("done_reason")
                    )
                    return
        raise MalformedProviderResponse(f"{self.name} stream ended without done", provider=self.name)

    async def embed(self, request: Request, model: str) -> Embeddings:
        doc = await self._post("/api/embed", {"model": model, "input": list(request.input or [])}, request)
        with map_exceptions(self.name):
            vectors = [list(map(float, v)) for v in doc["embeddings"]]
            if len(vectors) != len(request.input or []):
                raise MalformedProviderResponse(f"{self.name} returned the wrong number of vectors", provider=self.name)
            return Embeddings(
                vectors=vectors,
                model=str(doc.get("model", model)),
                usage=TokenUsage(input_tokens=int(doc.get("prompt_eval_count") or 0)),
            )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
