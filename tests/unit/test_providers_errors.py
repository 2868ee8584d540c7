"""Error translation inside every adapter: statuses, Retry-After, malformed bodies, timeouts, streams."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from infra.emulator.testing import RunningEmulator, running_emulator, test_catalog
from schemas.request import Message, Request
from schemas.response import TokenUsage
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
from streams.providers.base import Provider, StreamDelta, StreamEnd, StreamEvent
from streams.providers.http import guard_stream, raise_for_status, raise_stream_error
from streams.providers.openai import OpenAIProvider
from streams.providers.registry import build_provider
from streams.resilience import BreakerBoard, Deadline, ResilientCaller
from streams.settings import ProviderKeys

CHAT = [
    ("openai", "gpt-4o-mini"),
    ("azure", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("ollama", "llama3.1:8b"),
    ("grok", "grok-3-mini"),
]
STATUS = [
    (400, BadRequest),
    (401, AuthenticationFailed),
    (403, AuthenticationFailed),
    (402, ProviderQuotaExhausted),
    (404, ModelNotFound),
    (408, ProviderTimeout),
    (500, ProviderUnavailable),
    (502, ProviderUnavailable),
    (503, ProviderUnavailable),
    (504, ProviderTimeout),
    (529, ProviderUnavailable),
]
_ids = itertools.count()


def req(text: str = "Tell me about partitions.") -> Request:
    return Request(request_id=f"err-{next(_ids)}", tenant="acme", messages=[Message(role="user", content=text)])


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
async def providers(emulator: RunningEmulator) -> AsyncIterator[dict[str, Provider]]:
    catalog = test_catalog().with_base_url_override(emulator.url)
    quick = Timeouts(connect_s=1.0, read_s=0.3, total_s=2.0)
    built = {
        name: build_provider(name, spec.model_copy(update={"timeouts": quick}), ProviderKeys())
        for name, spec in catalog.providers.items()
    }
    yield built
    for p in built.values():
        await p.aclose()


@pytest.fixture(autouse=True)
def _clean(emulator: RunningEmulator) -> None:
    emulator.reset()


async def drain(provider: Provider, model: str) -> list[object]:
    return [e async for e in provider.stream(req(), model)]


@pytest.mark.parametrize(("status", "kind"), STATUS)
@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_status_codes_become_typed_errors(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str, status: int, kind: type
) -> None:
    emulator.set_profile(name, script=[str(status), str(status)])
    with pytest.raises(kind) as caught:
        await providers[name].complete(req(), model)
    assert caught.value.provider == name
    assert type(caught.value).retryable == (status >= 500 or status == 408)
    with pytest.raises(kind):  # a stream failing before its first delta raises the same typed error
        await drain(providers[name], model)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_rate_limit_carries_retry_after(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, rate_limit_rate=1.0, retry_after_s=7)
    with pytest.raises(RateLimited) as caught:
        await providers[name].complete(req(), model)
    assert caught.value.retry_after_s == pytest.approx(7.0)
    assert caught.value.retryable
    with pytest.raises(RateLimited):
        await drain(providers[name], model)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_malformed_bodies(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, malformed_rate=1.0)
    with pytest.raises(MalformedProviderResponse):
        await providers[name].complete(req(), model)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_hang_becomes_timeout(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, hang_rate=1.0, hang_s=5.0)
    with pytest.raises(ProviderTimeout):
        await providers[name].complete(req(), model)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_stall_before_the_first_delta_is_a_timeout(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, chunk_delay_ms=1000)  # read timeout is 0.3 s; first chunk stalls
    with pytest.raises(ProviderTimeout):
        await drain(providers[name], model)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_disconnect_after_deltas_is_stream_interrupted(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, disconnect_rate=1.0, disconnect_after=3)
    seen: list[object] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for event in providers[name].stream(req(), model):
            seen.append(event)
    assert [type(e) for e in seen] == [StreamDelta] * 3
    assert caught.value.provider == name
    assert not caught.value.retryable
    assert emulator.usage(name) == (0, 0)  # nothing billed for a reply that never completed


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_disconnect_before_first_delta_is_retryable(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, disconnect_rate=1.0, disconnect_after=0)
    with pytest.raises(ProviderError) as caught:
        await drain(providers[name], model)
    assert caught.value.retryable
    assert not isinstance(caught.value, StreamInterrupted)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_in_stream_error_event_before_output_is_typed(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, stream_error_rate=1.0, stream_error_after=0, stream_error_status=529)
    with pytest.raises(ProviderUnavailable):
        await drain(providers[name], model)
    if name == "ollama":
        return  # Ollama's in-stream errors are bare strings: no type to tell a rate limit apart
    emulator.set_profile(name, stream_error_rate=1.0, stream_error_after=0, stream_error_status=429)
    with pytest.raises(RateLimited):
        await drain(providers[name], model)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_in_stream_error_event_after_output_is_interrupted(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, stream_error_rate=1.0, stream_error_after=2)
    seen: list[object] = []
    with pytest.raises(StreamInterrupted):
        async for event in providers[name].stream(req(), model):
            seen.append(event)
    assert len(seen) == 2 and not any(isinstance(e, StreamEnd) for e in seen)


@pytest.mark.parametrize(("name", "model"), [c for c in CHAT if c[0] != "ollama"])
async def test_context_length_exceeded(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, context_window=5)
    with pytest.raises(ContextLengthExceeded):
        await providers[name].complete(req("x" * 400), model)


@pytest.mark.parametrize(("name", "model"), [c for c in CHAT if c[0] != "ollama"])
async def test_content_filtered(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    emulator.set_profile(name, blocked_words=["forbidden"])
    with pytest.raises(ContentFiltered):
        await providers[name].complete(req("say something forbidden"), model)


async def test_unreachable_provider_is_unavailable() -> None:
    catalog = test_catalog()
    spec = catalog.providers["anthropic"].model_copy(update={"base_url": "http://127.0.0.1:9/v1"})
    provider = build_provider("anthropic", spec, ProviderKeys())
    try:
        with pytest.raises(ProviderUnavailable):
            await provider.complete(req(), "claude-3-5-haiku-20241022")
    finally:
        await provider.aclose()


async def test_refused_stream_is_content_filtered(providers: dict[str, Provider], emulator: RunningEmulator) -> None:
    # Anthropic answers a blocked prompt with stop_reason "refusal" and no text, in a stream as in a reply
    emulator.set_profile("anthropic", blocked_words=["forbidden"])
    with pytest.raises(ContentFiltered):
        [e async for e in providers["anthropic"].stream(req("say something forbidden"), "claude-3-5-haiku-20241022")]


@pytest.mark.parametrize("finish", ["content_filter", "refusal"])
async def test_stream_guard_turns_a_textless_refusal_into_content_filtered(finish: str) -> None:
    # OpenAI/Azure: a 200 stream whose only choice ends with finish_reason "content_filter" and no text
    async def events() -> AsyncIterator[StreamEvent]:
        yield StreamDelta("")
        yield StreamEnd(model="m", usage=TokenUsage(input_tokens=9), finish_reason=finish)

    with pytest.raises(ContentFiltered):
        [e async for e in guard_stream("azure", events())]


async def test_stream_guard_passes_a_filter_after_text() -> None:
    async def events() -> AsyncIterator[StreamEvent]:
        yield StreamDelta("partial")
        yield StreamEnd(model="m", usage=TokenUsage(input_tokens=9, output_tokens=1), finish_reason="content_filter")

    seen = [e async for e in guard_stream("azure", events())]
    assert isinstance(seen[-1], StreamEnd) and seen[-1].finish_reason == "content_filter"


QUOTA_BODY = b'{"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "code": null}}'


def test_insufficient_quota_429_is_quota_exhausted_not_a_rate_limit() -> None:
    with pytest.raises(ProviderQuotaExhausted) as caught:
        raise_for_status("openai", 429, {"Retry-After": "1"}, QUOTA_BODY)
    assert not caught.value.retryable and caught.value.provider == "openai"
    with pytest.raises(ProviderQuotaExhausted):  # the same error arriving inside a 200 stream
        raise_stream_error("openai", {"type": "insufficient_quota", "message": "quota"})
    with pytest.raises(RateLimited):  # a plain rate limit is still one
        raise_for_status("openai", 429, {}, b'{"error": {"type": "rate_limit_exceeded", "message": "slow down"}}')


def test_deployment_not_found_is_model_not_found() -> None:
    body = b'{"error": {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}}'
    with pytest.raises(ModelNotFound) as caught:
        raise_for_status("azure", 404, {}, body)
    assert not caught.value.retryable
    with pytest.raises(ModelNotFound):
        raise_stream_error("anthropic", {"type": "not_found_error", "message": "model: claude-9"})


async def test_a_request_that_cannot_be_built_is_local_not_the_providers_fault(emulator: RunningEmulator) -> None:
    # an adapter handed a key with a newline (bypassing settings): aiohttp refuses the header before any call
    secret = "sk-proj-SECRETSECRET1234"
    spec = test_catalog().with_base_url_override(emulator.url).providers["openai"]
    bad = OpenAIProvider("openai", spec, SecretStr(secret + "\n"))
    good = build_provider(
        "anthropic", test_catalog().with_base_url_override(emulator.url).providers["anthropic"], ProviderKeys()
    )
    try:
        with pytest.raises(LocalCallError) as caught:
            await bad.complete(req(), "gpt-4o-mini")
        assert secret not in str(caught.value) and not caught.value.retryable
        with pytest.raises(LocalCallError):
            await drain(bad, "gpt-4o-mini")
        board = BreakerBoard(failure_threshold=1)
        caller = ResilientCaller({"openai": bad, "anthropic": good}, board)
        result = await caller.complete(
            req(), [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-20241022")], Deadline.after(10)
        )
        assert result.ok and result.provider == "anthropic"
        assert board["openai"].state == "closed" and board["openai"].consecutive_failures == 0
        assert emulator.calls("openai") == 0
    finally:
        await bad.aclose()
        await good.aclose()
