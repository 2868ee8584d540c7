"""HTTP plumbing every adapter shares: one session, status mapping, SSE framing, error translation.

Low-level errors are translated here, at one boundary, into ``streams.errors.ProviderError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import aiohttp
import orjson

from schemas.base import utc_now
from streams.catalog import Timeouts
from streams.errors import (
    AuthenticationFailed,
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    LocalCallError,
    MalformedProviderResponse,
    ModelNotFound,
    ProviderError,
    ProviderQuotaExhausted,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    StreamInterrupted,
)
from streams.providers.base import StreamDelta, StreamEnd, StreamEvent
from streams.redact import redact_keys

REQUEST_ID_HEADER = "X-Aifleet-Request-Id"
"""Sent on every provider call so the emulator (and provider-side logs) can count calls per request."""

# Error ``type``/``code`` strings providers put in bodies and in-stream error events, mapped to the HTTP
# status they stand for, so in-stream errors translate exactly like status errors.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "invalid_request": 400,
    "context_length_exceeded": 400,
    "content_filter": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "DeploymentNotFound": 404,
    "model_not_found": 404,
    "insufficient_quota": 429,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "timeout": 408,
    "api_error": 500,
    "server_error": 500,
    "overloaded_error": 529,
    "service_unavailable": 503,
}


QUOTA_CODES: frozenset[str] = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
"""Error codes a 429 carries when the account's quota or billing is spent, not its rate limit."""

REFUSAL_FINISH: frozenset[str | None] = frozenset({"content_filter", "refusal"})
"""Finish reasons (normalised to the OpenAI vocabulary, plus Anthropic's own) that mean the provider refused."""


def client_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's timeout object for a provider's connect/read/total limits."""
    return aiohttp.ClientTimeout(total=t.total_s, sock_connect=t.connect_s, sock_read=t.read_s)


def new_session(limit: int = 512) -> aiohttp.ClientSession:
    """A pooled client session; one per provider per worker."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, json_serialize=lambda o: orjson.dumps(o).decode())


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000.0)
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - utc_now()).total_seconds())
    except (TypeError, ValueError):
        return None


def _error_text(body: bytes) -> tuple[str, str]:
    """(code, message) from an OpenAI- or Anthropic-shaped error body, best effort."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:300].decode("utf-8", "replace")
    err = doc.get("error", doc) if isinstance(doc, dict) else {}
    if not isinstance(err, dict):
        return "", str(err)[:300]
    code = str(err.get("code") or err.get("type") or "")
    return code, str(err.get("message") or "")[:500]


def raise_for_status(provider: str, status: int, headers: Any, body: bytes) -> NoReturn:
    """Translate a non-2xx reply into the typed error it means."""
    code, text = _error_text(body)
    # provider text can quote the key the request presented: it never travels on in an error message
    msg = redact_keys(f"{provider} answered HTTP {status}: {text or code or 'no detail'}")
    lowered = f"{code} {text}".lower()
    if status == 402 or (status == 429 and any(q in lowered for q in QUOTA_CODES)):
        # the account is out of quota or credit: waiting does not help, another provider may answer
        raise ProviderQuotaExhausted(msg, provider=provider)
    if status == 429:
        raise RateLimited(msg, provider=provider, retry_after_s=parse_retry_after(headers))
    if status in (401, 403):
        raise AuthenticationFailed(msg, provider=provider)
    if status in (408, 504):
        raise ProviderTimeout(msg, provider=provider)
    if status == 404:
        # the model or deployment is not there (Azure DeploymentNotFound, Ollama "model not found"): that
        # provider's configuration, not the request, so the chain falls back
        raise ModelNotFound(msg, provider=provider)
    if status in (400, 413, 422):
        if "context_length" in lowered or "maximum context" in lowered or "too long" in lowered:
            raise ContextLengthExceeded(msg, provider=provider)
        if "content_filter" in lowered or "content management policy" in lowered:
            raise ContentFiltered(msg, provider=provider)
        raise BadRequest(msg, provider=provider)
    raise ProviderUnavailable(msg, provider=provider, retry_after_s=parse_retry_after(headers))


@contextlib.contextmanager
def map_exceptions(provider: str) -> Iterator[None]:
    """Translate transport errors raised inside the block into typed provider errors."""
    try:
        yield
    except ProviderError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise ProviderTimeout(f"{provider} did not answer in time", provider=provider) from exc
    except aiohttp.ClientPayloadError as exc:
        raise MalformedProviderResponse(f"{provider} sent a broken body: {exc}", provider=provider) from exc
    except (aiohttp.ClientError, ConnectionError, OSError) as exc:
        raise ProviderUnavailable(f"{provider} unreachable: {type(exc).__name__}", provider=provider) from exc
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        # only reached for the reply: building and sending the request goes through ``send``
        raise MalformedProviderResponse(f"{provider} sent a malformed body: {exc!r}", provider=provider) from exc


async def send(provider: str, session: aiohttp.ClientSession, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
    """POST ``url`` (use as ``async with await send(...) as resp``).

    A ``ValueError``/``TypeError`` raised while the request is built or sent (e.g. aiohttp refusing a header
    with a control character) is our fault, not the provider's: ``LocalCallError``, which no breaker counts.
    The exception's text is not kept: it could quote a header value.
    """
    try:
        return await session.post(url, **kwargs)
    except aiohttp.ClientError:
        raise
    except (ValueError, TypeError) as exc:
        raise LocalCallError(
            f"{provider}: the call could not be built here ({type(exc).__name__}); check its key and base_url",
            provider=provider,
        ) from None


def loads_json(provider: str, body: bytes) -> Any:
    """Parse a JSON body, or raise MalformedProviderResponse."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedProviderResponse(f"{provider} sent a body that is not JSON", provider=provider) from exc


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str | None, str]]:
    """Yield (event, data) pairs from a server-sent-events body, per the SSE framing rules."""
    event: str | None = None
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def raise_stream_error(provider: str, error: Any, default_status: int = 500) -> NoReturn:
    """Translate an error event that arrived inside a 200 stream (``{"error": {...}}`` or a string)."""
    body = orjson.dumps({"error": error})
    code, _ = _error_text(body)
    raise_for_status(provider, ERROR_TYPE_STATUS.get(code, default_status), {}, body)


async def guard_stream(provider: str, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """Enforce the stream contract around an adapter's raw event generator.

    A stream that ends with a refusal / content-filter finish reason and no text raises ``ContentFiltered``.
    Any failure before the first ``StreamDelta`` surfaces as the typed (often retryable) provider error;
    any failure after a delta went out becomes ``StreamInterrupted``. The stream must end with exactly one
    ``StreamEnd``; ending without one is a malformed reply (or an interruption, after deltas).
    """
    sent_delta = False
    ended = False
    it = aiter(events)
    try:
        while True:
            try:
                with map_exceptions(provider):
                    event = await anext(it)
            except StopAsyncIteration:
                break
            except ProviderError as exc:
                if sent_delta:
                    raise StreamInterrupted(
                        f"{provider} stream broke after output was sent: {exc.message}", provider=provider
                    ) from exc
                raise
            if ended:
                continue
            if isinstance(event, StreamDelta):
                if not event.text:
                    continue
                sent_delta = True
            elif isinstance(event, StreamEnd):
                ended = True
                if not sent_delta and event.finish_reason in REFUSAL_FINISH:
                    # as complete() does: a refusal with no text is an error, never a clean empty answer
                    raise ContentFiltered(
                        f"{provider} refused the request (finish_reason {event.finish_reason})", provider=provider
                    )
            yield event
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    if not ended:
        if sent_delta:
            raise StreamInterrupted(f"{provider} stream ended before its final event", provider=provider)
        raise MalformedProviderResponse(f"{provider} stream ended before any output", provider=provider)
