"""OpenAI Chat Completions and Embeddings, and every server that speaks the same wire format
(vLLM, xAI Grok, Hugging Face TGI's Messages API): only the base URL and key differ.
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
from streams.errors import ContentFiltered, MalformedProviderResponse
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


class OpenAIProvider:
    """An adapter for the OpenAI wire format."""

    def __init__(self, name: str, spec: ProviderSpec, api_key: SecretStr | None) -> None:
        self.name = name
        self.spec = spec
        self._api_key = api_key
        self._timeout = client_timeout(spec.timeouts)
        self._session: aiohttp.ClientSession | None = None

    # -- wire format -------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.spec.base_url.rstrip('/')}{path}"

    def _chat_url(self, model: str) -> str:
        """Where chat completions for ``model`` go (Azure overrides this with its deployment URL)."""
        return self._url("/chat/completions")

    def _embeddings_url(self, model: str) -> str:
        """Where embeddings for ``model`` go."""
        return self._url("/embeddings")

    def _auth_headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    def _headers(self, request: Request | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self._auth_headers()}
        if request is not None:
            headers[REQUEST_ID_HEADER] = request.request_id
        return headers

    def _chat_body(self, request: Request, model: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.model_dump() for m in request.messages or []],
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    @staticmethod
    def _usage(doc: dict[str, Any]) -> TokenUsage:
        usage = doc.get("usage") or {}
        return TokenUsage(
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
        )

    # -- Provider ----------------------------------------------------------------------------
    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session()
        return self._session

    async def _post(self, url: str, body: dict[str, Any], request: Request) -> Any:
        with map_exceptions(self.name):
            async with await send(
                self.name,
                self.session,
                url,
                data=orjson.dumps(body),
                headers=self._headers(request),
                timeout=self._timeout,
            ) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise_for_status(self.name, resp.status, resp.headers, raw)
                return loads_json(self.name, raw)

    async def complete(self, request: Request, model: str) -> Completion:
        doc = await self._post(self._chat_url(model), self._chat_body(request, model, stream=False), request)
        with map_exceptions(self.name):
            choice = doc["choices"][0]
            text = choice["message"].get("content")
            finish = choice.get("finish_reason")
            if finish == "content_filter" and not text:
                raise ContentFiltered(f"{self.name} filtered the completion", provider=self.name)
            if not isinstance(text, str):
                raise MalformedProviderResponse(f"{self.name}: content is not text", provider=self.name)
            return Completion(
                text=text,
                model=str(doc.get("model", model)),
                usage=self._usage(doc),
                finish_reason=finish,
            )

    def stream(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        return guard_stream(self.name, self._stream_events(request, model))

    async def _stream_events(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        body = self._chat_body(request, model, stream=True)
        usage: TokenUsage | None = None
        finish: str | None = None
        served_model = model
        async with await send(
            self.name,
            self.session,
            self._chat_url(model),
            data=orjson.dumps(body),
            headers=self._headers(request),
            timeout=self._timeout,
        ) as resp:
            if resp.status >= 300:
                raise_for_status(self.name, resp.status, resp.headers, await resp.read())
            async for _event, data in iter_sse(resp.content):
                if data == "[DONE]":
                    break
                doc = loads_json(self.name, data.encode())
                if not isinstance(doc, dict):
                    raise MalformedProviderResponse(
                        f"{self.name} sent a chunk that is not an object", provider=self.name
                    )
                if doc.get("error"):
                    raise_stream_error(self.name, doc["error"])
                served_model = str(doc.get("model") or served_model)
                if doc.get("usage"):
                    usage = self._usage(doc)
                for choice in doc.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        yield StreamDelta(delta)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            else:
                # The body ended without [DONE]: the connection was cut.
                raise MalformedProviderResponse(f"{self.name} stream ended without [DONE]", provider=self.name)
        if usage is None:
            raise MalformedProviderResponse(f"{self.name} stream carried no usage", provider=self.name)
        yield StreamEnd(model=served_model, usage=usage, finish_reason=finish)

    async def embed(self, request: Request, model: str) -> Embeddings:
        body = {"model": model, "input": list(request.input or [])}
        doc = await self._post(self._embeddings_url(model), body, request)
        with map_exceptions(self.name):
            data = sorted(doc["data"], key=lambda d: d["index"])
            usage = doc.get("usage") or {}
            return Embeddings(
                vectors=[list(map(float, d["embedding"])) for d in data],
                model=str(doc.get("model", model)),
                usage=TokenUsage(input_tokens=int(usage.get("prompt_tokens", 0))),
            )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
