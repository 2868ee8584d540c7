"""Every adapter against the in-process emulator: JSON and streamed completions, embeddings, usage."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.emulator.answers import answer_for, count_tokens, embedding_for
from infra.emulator.testing import RunningEmulator, running_emulator, test_catalog
from schemas.request import Message, Request
from streams.errors import BadRequest
from streams.providers.anthropic import to_messages_body
from streams.providers.base import Provider, StreamDelta, StreamEnd
from streams.providers.registry import build_providers
from streams.settings import ProviderKeys

ROOT = Path(__file__).resolve().parents[2]
CHAT = [
    ("openai", "gpt-4o-mini"),
    ("azure", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("ollama", "llama3.1:8b"),
    ("grok", "grok-3-mini"),
    ("vllm", "Qwen/Qwen2.5-7B-Instruct"),
    ("huggingface", "meta-llama/Llama-3.1-8B-Instruct"),
]
EMBED = [("openai", "text-embedding-3-small"), ("azure", "text-embedding-3-small"), ("ollama", "nomic-embed-text")]
_ids = itertools.count()


def chat_request(max_tokens: int | None = None) -> Request:
    return Request(
        request_id=f"req-{next(_ids)}",
        tenant="acme",
        messages=[
            Message(role="system", content="You are terse."),
            Message(role="user", content="Explain Kafka consumer groups in one line."),
        ],
        max_tokens=max_tokens,
    )


def expected(model: str, request: Request) -> tuple[str, int, int]:
    prompt = "\n".join(m.content for m in request.messages or [])
    text = answer_for(model, prompt, request.max_tokens)
    return text, count_tokens(prompt), count_tokens(text)


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
async def providers(emulator: RunningEmulator) -> AsyncIterator[dict[str, Provider]]:
    catalog = test_catalog().with_base_url_override(emulator.url)
    built = build_providers(catalog, ProviderKeys())
    yield built
    for p in built.values():
        await p.aclose()


@pytest.fixture(autouse=True)
def _clean(emulator: RunningEmulator) -> None:
    emulator.reset()


def test_every_adapter_satisfies_the_protocol(providers: dict[str, Provider]) -> None:
    assert set(providers) >= {name for name, _ in CHAT}
    for p in providers.values():
        assert isinstance(p, Provider)


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_complete_returns_text_and_the_providers_own_usage(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    request = chat_request()
    text, n_in, n_out = expected(model, request)
    done = await providers[name].complete(request, model)
    assert done.text == text
    assert done.model == model
    assert (done.usage.input_tokens, done.usage.output_tokens) == (n_in, n_out)
    assert done.finish_reason == "stop"
    assert emulator.calls(name) == 1
    assert emulator.usage(name) == (n_in, n_out)
    assert emulator.state.calls_by_request[request.request_id] == 1


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_stream_yields_deltas_then_one_end_with_streamed_usage(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    request = chat_request()
    text, n_in, n_out = expected(model, request)
    events = [e async for e in providers[name].stream(request, model)]
    deltas = [e for e in events if isinstance(e, StreamDelta)]
    ends = [e for e in events if isinstance(e, StreamEnd)]
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == text
    assert len(ends) == 1 and events[-1] is ends[0]
    # usage comes from the provider's stream and equals what the emulator counted for this reply
    assert (ends[0].usage.input_tokens, ends[0].usage.output_tokens) == emulator.usage(name) == (n_in, n_out)
    assert ends[0].finish_reason == "stop"


@pytest.mark.parametrize(("name", "model"), CHAT)
async def test_max_tokens_reaches_the_provider(providers: dict[str, Provider], name: str, model: str) -> None:
    request = chat_request(max_tokens=3)
    text, _, n_out = expected(model, request)
    done = await providers[name].complete(request, model)
    assert done.text == text
    assert done.usage.output_tokens == n_out


@pytest.mark.parametrize(("name", "model"), EMBED)
async def test_embeddings_in_input_order(
    providers: dict[str, Provider], emulator: RunningEmulator, name: str, model: str
) -> None:
    texts = ["alpha", "a longer second text", "3"]
    request = Request(request_id=f"req-{next(_ids)}", tenant="acme", kind="embedding", input=texts)
    out = await providers[name].embed(request, model)
    assert out.vectors == [pytest.approx(embedding_for(t)) for t in texts]
    assert out.usage.input_tokens == sum(count_tokens(t) for t in texts)
    assert emulator.usage(name) == (out.usage.input_tokens, 0)


async def test_anthropic_serves_no_embeddings(providers: dict[str, Provider]) -> None:
    request = Request(request_id="e-1", tenant="acme", kind="embedding", input=["x"])
    with pytest.raises(BadRequest):
        await providers["anthropic"].embed(request, "claude-3-5-haiku-20241022")


def test_anthropic_body_puts_system_apart_merges_turns_and_sets_max_tokens() -> None:
    request = Request(
        request_id="a-1",
        tenant="acme",
        messages=[
            Message(role="system", content="S1"),
            Message(role="assistant", content="earlier"),
            Message(role="user", content="u1"),
            Message(role="user", content="u2"),
            Message(role="system", content="S2"),
        ],
        temperature=1.7,
    )
    body = to_messages_body(request, "claude-x", 1234, stream=True)
    assert body["system"] == "S1\n\nS2"
    assert body["max_tokens"] == 1234
    assert body["temperature"] == 1.0
    assert body["stream"] is True
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert body["messages"][2]["content"] == "u1\n\nu2"


async def test_early_close_releases_the_stream(providers: dict[str, Provider]) -> None:
    stream = providers["anthropic"].stream(chat_request(), "claude-3-5-haiku-20241022")
    first = await anext(aiter(stream))
    assert isinstance(first, StreamDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    # the provider still works afterwards (its connection went back to the pool or was dropped)
    done = await providers["anthropic"].complete(chat_request(), "claude-3-5-haiku-20241022")
    assert done.text
