"""ResilientCaller against real adapters and the in-process emulator: retries, fallback, breakers, streams."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from infra.emulator.answers import answer_for
from infra.emulator.testing import RunningEmulator, running_emulator, test_catalog
from schemas.errors import ErrorReason
from schemas.health import ProviderHealth
from schemas.request import Message, Request
from streams.catalog import Timeouts
from streams.errors import BadRequest, DeadlineExceeded, NoProviderAvailable, StreamInterrupted
from streams.providers.base import Provider, StreamDelta, StreamEnd
from streams.providers.registry import build_provider
from streams.resilience import (
    BreakerBoard,
    Deadline,
    FakeClock,
    ProviderLimiter,
    ResilientCaller,
    RetryPolicy,
    StreamError,
)
from streams.routing.cost import approx_tokens
from streams.routing.cost import estimate_tokens as estimate_usage
from streams.settings import ProviderKeys

OPENAI = ("openai", "gpt-4o-mini")
ANTHROPIC = ("anthropic", "claude-3-5-haiku-20241022")
OLLAMA = ("ollama", "llama3.1:8b")
CHAIN = [OPENAI, ANTHROPIC]
_ids = itertools.count()


def req() -> Request:
    return Request(
        request_id=f"rc-{next(_ids)}", tenant="acme", messages=[Message(role="user", content="Summarise ISR.")]
    )


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
async def providers(emulator: RunningEmulator) -> AsyncIterator[dict[str, Provider]]:
    catalog = test_catalog().with_base_url_override(emulator.url)
    quick = Timeouts(connect_s=1.0, read_s=2.0, total_s=5.0)
    built = {
        name: build_provider(name, catalog.providers[name].model_copy(update={"timeouts": quick}), ProviderKeys())
        for name in ("openai", "anthropic", "ollama")
    }
    yield built
    for p in built.values():
        await p.aclose()


@pytest.fixture(autouse=True)
def _clean(emulator: RunningEmulator) -> None:
    emulator.reset()


def make(
    providers: dict[str, Provider], clock: FakeClock | None = None, **kw: object
) -> tuple[ResilientCaller, BreakerBoard, list[ProviderHealth], FakeClock]:
    clock = clock or FakeClock()
    events: list[ProviderHealth] = []
    board = BreakerBoard(clock=clock, on_transition=events.append, worker="w1")
    policy = kw.pop("policy", RetryPolicy(max_attempts=2, base_delay_s=0.05))
    caller = ResilientCaller(providers, board, clock=clock, policy=policy, **kw)  # type: ignore[arg-type]
    return caller, board, events, clock


async def test_first_provider_answers(providers: dict[str, Provider], emulator: RunningEmulator) -> None:
    caller, _, _, clock = make(providers)
    request = req()
    result = await caller.complete(request, CHAIN, Deadline.after(10, clock))
    assert result.ok and result.provider == "openai" and result.model == "gpt-4o-mini"
    assert result.value is not None and result.value.text == answer_for("gpt-4o-mini", "Summarise ISR.", None)
    assert [(a.provider, a.outcome) for a in result.attempts] == [("openai", "ok")]
    assert result.attempts[0].usage == result.value.usage
    assert (result.value.usage.input_tokens, result.value.usage.output_tokens) == emulator.usage("openai")


async def test_retry_honours_retry_after_then_succeeds(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", script=["rate_limit"], retry_after_s=1.5)
    caller, _, _, clock = make(providers)
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert result.ok and result.provider == "openai"
    assert [a.outcome for a in result.attempts] == ["error", "ok"]
    assert result.attempts[0].reason == ErrorReason.RATE_LIMITED
    assert clock.slept == [pytest.approx(1.5, abs=0.06)] and clock.slept[0] >= 1.5
    assert emulator.calls("openai") == 2 and emulator.calls("anthropic") == 0


async def test_retry_after_beyond_the_deadline_falls_back_at_once(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", rate_limit_rate=1.0, retry_after_s=20)
    caller, _, _, clock = make(providers)
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert result.ok and result.provider == "anthropic"
    assert clock.slept == []
    assert [(a.provider, a.outcome) for a in result.attempts] == [("openai", "error"), ("anthropic", "ok")]


async def test_fallback_after_retries_and_one_usage_record_per_attempt(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", error_rates={503: 1.0})
    caller, _, _, clock = make(providers)
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert result.ok and result.provider == "anthropic"
    assert [(a.provider, a.outcome, a.reason) for a in result.attempts] == [
        ("openai", "error", ErrorReason.PROVIDER_UNAVAILABLE),
        ("openai", "error", ErrorReason.PROVIDER_UNAVAILABLE),
        ("anthropic", "ok", None),
    ]
    assert emulator.calls("openai") == 2
    ok = result.attempts[-1]
    assert ok.usage is not None and (ok.usage.input_tokens, ok.usage.output_tokens) == emulator.usage("anthropic")


async def test_bad_request_stops_the_chain(providers: dict[str, Provider], emulator: RunningEmulator) -> None:
    emulator.set_profile("openai", error_rates={400: 1.0})
    caller, _, _, clock = make(providers)
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert not result.ok and isinstance(result.error, BadRequest)
    assert emulator.calls("anthropic") == 0 and len(result.attempts) == 1


async def test_breaker_opens_skips_then_sends_one_probe_and_closes(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", error_rates={500: 1.0})
    caller, board, events, clock = make(providers, policy=RetryPolicy(max_attempts=1))
    for _ in range(5):
        assert (await caller.complete(req(), CHAIN, Deadline.after(10, clock))).provider == "anthropic"
    assert board["openai"].state == "open" and emulator.calls("openai") == 5
    skipped = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert skipped.provider == "anthropic"
    assert [(a.provider, a.outcome, a.called) for a in skipped.attempts] == [
        ("openai", "circuit_open", False),
        ("anthropic", "ok", True),
    ]
    assert emulator.calls("openai") == 5  # no call reached the open provider
    emulator.set_profile("openai")  # healthy again
    clock.advance(60)
    probe = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert probe.provider == "openai" and emulator.calls("openai") == 6
    assert board["openai"].state == "closed"
    assert [(e.previous_state, e.state) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_remote_open_event_diverts_traffic(providers: dict[str, Provider], emulator: RunningEmulator) -> None:
    caller, board, _, clock = make(providers)
    board.apply(ProviderHealth(provider="openai", state="open", worker="w2", ts=clock.wall()))
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert result.provider == "anthropic" and emulator.calls("openai") == 0


async def test_saturated_local_rate_limit_falls_back(providers: dict[str, Provider], emulator: RunningEmulator) -> None:
    clock = FakeClock()
    limiter = ProviderLimiter("openai", rpm=60, tpm=100_000, burst=1, clock=clock)
    caller, _, _, _ = make(providers, clock=clock, limiters={"openai": limiter}, limiter_wait_s=0.2)
    first = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    second = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert first.provider == "openai"
    assert second.provider == "anthropic"
    assert second.attempts[0].outcome == "rate_limited" and not second.attempts[0].called
    assert emulator.calls("openai") == 1


async def test_a_request_larger_than_every_tpm_share_is_not_retryable(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    clock = FakeClock()
    limiters = {name: ProviderLimiter(name, rpm=60, tpm=1_000, clock=clock) for name in ("openai", "anthropic")}
    caller, _, _, _ = make(providers, clock=clock, limiters=limiters)
    request = Request(
        request_id="big-1", tenant="acme", messages=[Message(role="user", content="hi")], max_tokens=5_000
    )
    result = await caller.complete(request, CHAIN, Deadline.after(10, clock))
    assert result.error is not None
    info = result.error.to_info()
    assert info.reason == ErrorReason.EXCEEDS_RATE_LIMIT and not info.retryable and info.retry_after_s is None
    assert emulator.calls("openai") == 0 and emulator.calls("anthropic") == 0
    # one provider too small, the other merely saturated: still a retryable rate limit, with its wait
    limiters["anthropic"] = ProviderLimiter("anthropic", rpm=60, tpm=100_000, burst=1, clock=clock)
    assert limiters["anthropic"].requests.try_acquire()
    caller, _, _, _ = make(providers, clock=clock, limiters=limiters, limiter_wait_s=0.2)
    result = await caller.complete(request, CHAIN, Deadline.after(10, clock))
    assert result.error is not None and result.error.reason == ErrorReason.RATE_LIMITED and result.error.retryable
    assert result.error.retry_after_s == pytest.approx(1.0)


async def test_every_provider_rate_limited_is_rate_limited_not_no_provider(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    clock = FakeClock()
    limiters = {
        name: ProviderLimiter(name, rpm=60, tpm=100_000, burst=1, clock=clock) for name in ("openai", "anthropic")
    }
    for limiter in limiters.values():
        assert limiter.requests.try_acquire()  # our share of both is used up for the next second
    caller, _, _, _ = make(providers, clock=clock, limiters=limiters, limiter_wait_s=0.2)
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        ("openai", "rate_limited"),
        ("anthropic", "rate_limited"),
    ]
    assert result.error is not None
    info = result.error.to_info()
    assert info.reason == ErrorReason.RATE_LIMITED and info.retryable
    assert info.retry_after_s == pytest.approx(1.0)
    stream = caller.stream(req(), CHAIN, Deadline.after(10, clock))
    end = (await collect(stream))[-1]
    assert isinstance(end, StreamError) and end.error.to_info().reason == ErrorReason.RATE_LIMITED
    assert emulator.calls("openai") == 0 and emulator.calls("anthropic") == 0


async def test_nothing_callable_is_no_provider_available(providers: dict[str, Provider]) -> None:
    caller, board, _, clock = make(providers)
    for name in ("openai", "anthropic"):
        board.apply(ProviderHealth(provider=name, state="open", worker="w2", ts=clock.wall()))
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert isinstance(result.error, NoProviderAvailable)
    assert result.error.retry_after_s == pytest.approx(60)
    assert not any(a.called for a in result.attempts)


async def test_hang_is_cut_at_the_deadline(providers: dict[str, Provider], emulator: RunningEmulator) -> None:
    emulator.set_profile("openai", hang_rate=1.0, hang_s=3.0)
    board = BreakerBoard()
    caller = ResilientCaller(providers, board)
    result = await caller.complete(req(), [OPENAI], Deadline.after(0.3))  # nothing to fall back to
    assert isinstance(result.error, DeadlineExceeded)
    assert [a.outcome for a in result.attempts] == ["deadline"]
    assert 0.25 < result.attempts[0].latency_s < 1.0
    assert board["openai"].consecutive_failures == 0  # a 0.3 s cap is the client's deadline, not a verdict


async def test_hang_within_a_fair_cap_falls_back_and_opens_the_breaker(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    # The shipped gap: a read timeout longer than the request's deadline. The primary gets half of the
    # remaining deadline; cut there it is a ProviderTimeout (counted, as the cap was >= timeout_blame_s)
    # and the secondary answers in the other half.
    emulator.set_profile("openai", hang_rate=1.0, hang_s=30.0)
    board = BreakerBoard(failure_threshold=2)
    caller = ResilientCaller(providers, board, timeout_blame_s=0.1)
    for failures in (1, 2):
        result = await caller.complete(req(), CHAIN, Deadline.after(0.6))
        assert result.ok and result.provider == "anthropic"
        assert [(a.provider, a.outcome, a.reason) for a in result.attempts] == [
            ("openai", "error", ErrorReason.TIMEOUT),
            ("anthropic", "ok", None),
        ]
        assert result.attempts[0].error is not None and result.attempts[0].error.retryable
        assert board["openai"].consecutive_failures == failures
    assert board["openai"].state == "open"
    result = await caller.complete(req(), CHAIN, Deadline.after(0.6))
    assert result.ok and [(a.provider, a.outcome) for a in result.attempts] == [
        ("openai", "circuit_open"),
        ("anthropic", "ok"),
    ]
    assert emulator.calls("openai") == 2


async def test_hang_under_a_tight_client_deadline_falls_back_without_blame(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    # A 0.4 s deadline gives the primary a 0.2 s cap, under timeout_blame_s (5 s): a healthy but slower
    # provider must not be opened by clients with tiny deadlines, yet the request still falls back.
    emulator.set_profile("openai", hang_rate=1.0, hang_s=30.0)
    board = BreakerBoard(failure_threshold=1)
    caller = ResilientCaller(providers, board)
    result = await caller.complete(req(), CHAIN, Deadline.after(0.4))
    assert result.ok and result.provider == "anthropic"
    assert [(a.provider, a.reason) for a in result.attempts] == [("openai", ErrorReason.TIMEOUT), ("anthropic", None)]
    assert board["openai"].consecutive_failures == 0 and board["openai"].state == "closed"


async def test_hang_without_fallback_is_blamed_when_the_cap_was_fair(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", hang_rate=1.0, hang_s=30.0)
    board = BreakerBoard()
    caller = ResilientCaller(providers, board, timeout_blame_s=0.1)
    result = await caller.complete(req(), [OPENAI], Deadline.after(0.3))
    assert isinstance(result.error, DeadlineExceeded)
    assert board["openai"].consecutive_failures == 1


async def test_stream_hang_before_first_delta_falls_back(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", hang_rate=1.0, hang_s=30.0)
    board = BreakerBoard()
    caller = ResilientCaller(providers, board, timeout_blame_s=0.1)
    stream = caller.stream(req(), CHAIN, Deadline.after(0.6))
    events = await collect(stream)
    assert isinstance(events[-1], StreamEnd) and len(events) > 1
    assert [(a.provider, a.outcome, a.reason) for a in stream.attempts] == [
        ("openai", "error", ErrorReason.TIMEOUT),
        ("anthropic", "ok", None),
    ]
    assert board["openai"].consecutive_failures == 1


async def test_embeddings_fall_back_past_a_provider_without_them(providers: dict[str, Provider]) -> None:
    caller, _, _, clock = make(providers)
    request = Request(request_id="emb-1", tenant="acme", kind="embedding", input=["a", "b"])
    result = await caller.embed(request, [ANTHROPIC, ("ollama", "nomic-embed-text")], Deadline.after(10, clock))
    # Anthropic's "no embeddings" is a BadRequest, which stops the chain: routing must not send it there
    assert isinstance(result.error, BadRequest)
    result = await caller.embed(request, [("ollama", "nomic-embed-text")], Deadline.after(10, clock))
    assert result.ok and result.value is not None and len(result.value.vectors) == 2


# -- streams -----------------------------------------------------------------------------------


async def collect(stream: AsyncIterator[object]) -> list[object]:
    return [e async for e in stream]


async def test_stream_happy_path_usage_equals_emulator(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    caller, _, _, clock = make(providers)
    stream = caller.stream(req(), [ANTHROPIC, OPENAI], Deadline.after(10, clock))
    events = await collect(stream)
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert all(isinstance(e, StreamDelta) for e in events[:-1])
    assert (end.usage.input_tokens, end.usage.output_tokens) == emulator.usage("anthropic")
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("anthropic", "ok")]
    assert stream.attempts[0].usage == end.usage and stream.attempts[0].first_delta_s is not None
    assert stream.provider == "anthropic"


@pytest.mark.parametrize(
    "fault",
    [
        {"disconnect_rate": 1.0, "disconnect_after": 0},
        {"stream_error_rate": 1.0, "stream_error_after": 0},
        {"error_rates": {503: 1.0}},
    ],
)
async def test_stream_falls_back_when_failure_precedes_the_first_delta(
    providers: dict[str, Provider], emulator: RunningEmulator, fault: dict[str, object]
) -> None:
    emulator.set_profile("openai", **fault)
    caller, _, _, clock = make(providers, policy=RetryPolicy(max_attempts=1))
    stream = caller.stream(req(), [OPENAI, OLLAMA], Deadline.after(10, clock))
    events = await collect(stream)
    text = "".join(e.text for e in events if isinstance(e, StreamDelta))
    assert text == answer_for("llama3.1:8b", "Summarise ISR.", None)  # only the fallback's words went out
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.input_tokens, end.usage.output_tokens) == emulator.usage("ollama")
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("openai", "error"), ("ollama", "ok")]


async def test_stream_mid_disconnect_ends_with_typed_error_and_no_fallback(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", disconnect_rate=1.0, disconnect_after=3)
    caller, board, _, clock = make(providers)
    stream = caller.stream(req(), CHAIN, Deadline.after(10, clock))
    events = await collect(stream)
    assert [type(e) for e in events] == [StreamDelta, StreamDelta, StreamDelta, StreamError]
    end = events[-1]
    assert isinstance(end, StreamError) and isinstance(end.error, StreamInterrupted)
    assert end.error.to_info().reason == ErrorReason.STREAM_INTERRUPTED
    assert emulator.calls("anthropic") == 0
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("openai", "error")]
    assert board["openai"].consecutive_failures == 1
    # billed an estimate (the stream never reported usage): the prompt as estimated, the output that went out
    sent = "".join(e.text for e in events if isinstance(e, StreamDelta))
    usage = stream.attempts[0].usage
    assert usage is not None and usage.input_tokens == estimate_usage(req()).input_tokens > 0
    assert usage.output_tokens == approx_tokens(sent) > 0


async def test_stream_closed_early_records_a_cancelled_attempt(providers: dict[str, Provider]) -> None:
    caller, board, _, clock = make(providers)
    stream = caller.stream(req(), CHAIN, Deadline.after(10, clock))
    it = aiter(stream)
    assert isinstance(await anext(it), StreamDelta)
    await stream.aclose()
    assert [(a.provider, a.outcome) for a in stream.attempts] == [("openai", "cancelled")]
    assert board["openai"].consecutive_failures == 0


async def test_refused_stream_stops_the_chain_with_content_filtered(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("anthropic", blocked_words=["forbidden"])
    caller, _, _, clock = make(providers)
    request = Request(request_id="refuse-1", tenant="acme", messages=[Message(role="user", content="forbidden")])
    stream = caller.stream(request, [ANTHROPIC, OPENAI], Deadline.after(10, clock))
    events = await collect(stream)
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert events[0].error.reason == ErrorReason.CONTENT_FILTERED
    assert emulator.calls("openai") == 0


async def test_provider_404_falls_back_and_counts_against_the_breaker(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", error_rates={404: 1.0})  # e.g. the model/deployment is missing there
    caller, board, _, clock = make(providers)
    result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
    assert result.ok and result.provider == "anthropic"
    assert [(a.provider, a.reason) for a in result.attempts] == [
        ("openai", ErrorReason.MODEL_NOT_FOUND),
        ("anthropic", None),
    ]
    assert emulator.calls("openai") == 1 and board["openai"].consecutive_failures == 1


async def test_exhausted_quota_is_called_once_then_falls_back(
    providers: dict[str, Provider], emulator: RunningEmulator
) -> None:
    emulator.set_profile("openai", error_rates={402: 1.0})
    caller, board, _, clock = make(providers, policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
    for n in (1, 2):
        result = await caller.complete(req(), CHAIN, Deadline.after(10, clock))
        assert result.ok and result.provider == "anthropic"
        assert [(a.provider, a.reason) for a in result.attempts] == [
            ("openai", ErrorReason.PROVIDER_QUOTA_EXHAUSTED),
            ("anthropic", None),
        ]
        assert emulator.calls("openai") == n and board["openai"].consecutive_failures == n
    assert clock.slept == []
