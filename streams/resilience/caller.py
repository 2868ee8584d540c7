"""``ResilientCaller``: call providers through breakers, rate limits, retries and a fallback chain.

    caller = ResilientCaller(providers, breakers, limiters)
    result = await caller.complete(request, [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku")],
                                   Deadline.at_wall(request.deadline))
    if result.ok: use(result.value, result.provider, result.model)
    else: answer_with(result.error)            # always a typed AifleetError
    for a in result.attempts: emit_usage(a)    # one per attempt; a.called says whether a call was made

For each (provider, model) in order: skip it when its circuit is open or our rate-limit share stays
saturated past ``limiter_wait_s``; else call it, retrying retryable errors with backoff (honouring
``retry_after_s``) while the deadline allows, then fall back to the next entry. ``BadRequest`` and
``ContentFiltered`` stop the chain (another provider would answer the same).

Each call is cut at its attempt cap: the provider's own ``timeouts.total_s``, the remaining deadline,
and, while a fallback is left in the chain, ``(1 - fallback_reserve)`` of the remaining deadline (by
default half: the rest is kept for the fallbacks). A call cut before the request's deadline raises
``ProviderTimeout`` and the chain moves on to the next provider (no retry: its time is spent); a call
cut by the deadline itself, with nothing left to fall back to, is ``DeadlineExceeded``. Either cut
counts against the provider's breaker only when the call was given at least ``timeout_blame_s``
(default 5 s): a cap shorter than that comes from a client's tight deadline and says nothing about
the provider's health (the breaker is released, no verdict).

When no call was made at all, the error is ``RateLimitSaturated``
(reason ``rate_limited``, with the soonest ``retry_after_s``) if every provider was skipped for its
rate limit, else ``NoProviderAvailable``. Results are returned, never raised.

``stream()`` does the same for streams but commits to a provider at its first delta: failures before
it fall back like ``complete``; after it the stream ends with a ``StreamError`` carrying a typed error
(``StreamInterrupted``, or ``DeadlineExceeded``). A resilient stream always ends with exactly one
``StreamEnd`` or ``StreamError``; it never raises a provider error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from schemas.errors import ErrorInfo, ErrorReason
from schemas.request import Request
from schemas.response import TokenUsage
from streams.errors import (
    AifleetError,
    BadRequest,
    ContentFiltered,
    DeadlineExceeded,
    MalformedProviderResponse,
    NoProviderAvailable,
    ProviderTimeout,
    StreamInterrupted,
)
from streams.providers.base import Completion, Embeddings, Provider, StreamDelta, StreamEnd
from streams.resilience.circuit_breaker import BreakerBoard
from streams.resilience.clock import SYSTEM_CLOCK, Clock, Deadline
from streams.resilience.errors import CircuitOpen, RateLimitSaturated, RequestExceedsRateLimit
from streams.resilience.retry import RetryPolicy
from streams.resilience.token_bucket import ProviderLimiter
from streams.routing.cost import approx_tokens
from streams.routing.cost import estimate_tokens as estimate_usage

log = logging.getLogger(__name__)

T = TypeVar("T")
Route = tuple[str, str]
"""(provider name, model name)."""

Outcome = Literal["ok", "error", "deadline", "cancelled", "circuit_open", "rate_limited"]
_CALLED: frozenset[str] = frozenset({"ok", "error", "deadline", "cancelled"})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one provider: a call that was made, or a skip (circuit open, our rate limit saturated)."""

    provider: str
    model: str
    outcome: Outcome
    latency_s: float = 0.0
    error: AifleetError | None = None
    usage: TokenUsage | None = None
    first_delta_s: float | None = None
    """Streams: seconds from the call to the first delta."""

    @property
    def called(self) -> bool:
        """Whether a provider call was actually made (skips made none and cost nothing)."""
        return self.outcome in _CALLED

    @property
    def reason(self) -> ErrorReason | None:
        return self.error.reason if self.error is not None else None

    def error_info(self) -> ErrorInfo | None:
        return self.error.to_info() if self.error is not None else None


@dataclass(slots=True)
class CallResult(Generic[T]):
    """What a resilient call came to: a value or a typed error, and every attempt on the way."""

    value: T | None
    error: AifleetError | None
    attempts: list[Attempt]

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def served_by(self) -> Attempt | None:
        """The successful attempt, if any."""
        return next((a for a in reversed(self.attempts) if a.outcome == "ok"), None)

    @property
    def provider(self) -> str | None:
        a = self.served_by
        return a.provider if a else None

    @property
    def model(self) -> str | None:
        a = self.served_by
        return a.model if a else None


@dataclass(frozen=True, slots=True)
class StreamError:
    """The terminal event of a resilient stream that did not finish: a typed error."""

    error: AifleetError


ResilientEvent = StreamDelta | StreamEnd | StreamError


def estimate_tokens(request: Request) -> int:
    """A pre-call token estimate for the tpm limiter (~4 characters a token, plus the output allowance)."""
    if request.kind == "embedding":
        return sum(max(1, math.ceil(len(t) / 4)) for t in request.input or [])
    prompt = sum(len(m.content) for m in request.messages or [])
    return max(1, math.ceil(prompt / 4)) + (request.max_tokens or 256)


def _stops_chain(error: AifleetError) -> bool:
    return isinstance(error, BadRequest | ContentFiltered)


class ResilientCaller:
    """Calls providers with breakers, limiters, retries and fallback. One per worker."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        breakers: BreakerBoard,
        limiters: Mapping[str, ProviderLimiter] | None = None,
        *,
        policy: RetryPolicy | None = None,
        limiter_wait_s: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        token_estimate: Callable[[Request], int] = estimate_tokens,
        fallback_reserve: float = 0.5,
        timeout_blame_s: float = 5.0,
    ) -> None:
        """``limiters``: this worker's rate-limit share per provider (none: unlimited). ``limiter_wait_s``:
        the longest to queue for our own rate limit before falling back. ``fallback_reserve``: the share
        of the remaining deadline an attempt leaves for the rest of the chain while a fallback is left.
        ``timeout_blame_s``: a call cut by its cap counts against the breaker only if it was given this long."""
        if not 0.0 <= fallback_reserve < 1.0:
            raise ValueError("fallback_reserve must be in [0, 1)")
        self.providers = providers
        self.breakers = breakers
        self.limiters = limiters or {}
        self.policy = policy or RetryPolicy()
        self.limiter_wait_s = limiter_wait_s
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.token_estimate = token_estimate
        self.fallback_reserve = fallback_reserve
        self.timeout_blame_s = timeout_blame_s

    # -- public API --------------------------------------------------------------------------
    async def complete(self, request: Request, chain: Sequence[Route], deadline: Deadline) -> CallResult[Completion]:
        """A chat completion from the first provider in ``chain`` that can give one before ``deadline``."""

        async def call(p: Provider, model: str) -> tuple[Completion, TokenUsage]:
            c = await p.complete(request, model)
            return c, c.usage

        return await self._run(request, chain, deadline, call)

    async def embed(self, request: Request, chain: Sequence[Route], deadline: Deadline) -> CallResult[Embeddings]:
        """Embeddings from the first provider in ``chain`` that can give them before ``deadline``."""

        async def call(p: Provider, model: str) -> tuple[Embeddings, TokenUsage]:
            e = await p.embed(request, model)
            return e, e.usage

        return await self._run(request, chain, deadline, call)

    def stream(self, request: Request, chain: Sequence[Route], deadline: Deadline) -> ResilientStream:
        """A streamed completion: iterate it for deltas, then one ``StreamEnd`` or ``StreamError``."""
        return ResilientStream(self, request, chain, deadline)

    # -- internals ---------------------------------------------------------------------------
    async def _admit(self, name: str, request: Request, deadline: Deadline) -> AifleetError | None:
        """Pass the provider's circuit and rate limit, or say why not (nothing to release on refusal)."""
        breaker = self.breakers[name]
        if not breaker.allow():
            return CircuitOpen(
                f"{name}: circuit {breaker.state}", provider=name, retry_after_s=breaker.retry_in() or None
            )
        limiter = self.limiters.get(name)
        if limiter is not None:
            try:
                await limiter.acquire(self.token_estimate(request), min(self.limiter_wait_s, deadline.remaining()))
            except RateLimitSaturated as exc:
                breaker.release()
                return exc
        return None

    def _skip(self, name: str, model: str, error: AifleetError) -> Attempt:
        outcome: Outcome = "circuit_open" if isinstance(error, CircuitOpen) else "rate_limited"
        return Attempt(name, model, outcome, error=error)

    def _judge(self, name: str, error: AifleetError | None) -> None:
        self.breakers[name].record(error)

    def _has_fallback(self, rest: Sequence[Route]) -> bool:
        """Whether a later chain entry could still be called (it has an adapter and its circuit is not open)."""
        return any(n in self.providers and self.breakers[n].state != "open" for n, _ in rest)

    def _attempt_cap(self, name: str, deadline: Deadline, rest: Sequence[Route]) -> tuple[float, bool]:
        """(seconds this attempt may take, whether that cap is the request's deadline itself)."""
        remaining = deadline.remaining()
        cap = remaining
        if self._has_fallback(rest):
            cap = remaining * (1.0 - self.fallback_reserve)
        provider = self.providers[name]
        spec = getattr(provider, "spec", None)
        if spec is not None:
            cap = min(cap, spec.timeouts.total_s)
        return cap, cap >= remaining

    def _cut(self, name: str, cap: float, is_deadline: bool, what: str) -> AifleetError:
        """The error for a call cut at its cap, after judging the breaker (blamed only for a fair cap)."""
        err: AifleetError
        if is_deadline:
            err = DeadlineExceeded(f"{name} {what} before the deadline", provider=name)
        else:
            err = ProviderTimeout(f"{name} {what} within its {cap:.3f}s attempt cap", provider=name)
        if cap >= self.timeout_blame_s:
            self.breakers[name].record_failure(ErrorReason.TIMEOUT)
        else:
            self.breakers[name].release()
        return err

    @staticmethod
    def _final_error(attempts: list[Attempt], last: AifleetError | None) -> AifleetError:
        if any(a.called for a in attempts) and last is not None:
            return last
        waits = [a.error.retry_after_s for a in attempts if a.error is not None and a.error.retry_after_s]
        detail = "; ".join(f"{a.provider}: {a.outcome}" for a in attempts) or "empty fallback chain"
        too_large = [a.error for a in attempts if isinstance(a.error, RequestExceedsRateLimit)]
        if attempts and len(too_large) == len(attempts):
            # No provider's share can ever take a request this large: retrying it as it is cannot help.
            first = too_large[0]
            return RequestExceedsRateLimit(f"{first.message} ({detail})", provider=first.provider)
        if attempts and all(a.outcome == "rate_limited" for a in attempts):
            # Every provider is up but our share of its rate limit is used: the client is rate limited.
            soonest = min(attempts, key=lambda a: a.error.retry_after_s or math.inf if a.error else math.inf)
            return RateLimitSaturated(
                f"every provider's rate limit is saturated ({detail})",
                provider=soonest.provider,
                retry_after_s=min(waits, default=None),
            )
        return NoProviderAvailable(
            f"no provider could take the call ({detail})", retry_after_s=min(waits, default=None)
        )

    async def _run(
        self,
        request: Request,
        chain: Sequence[Route],
        deadline: Deadline,
        call: Callable[[Provider, str], Awaitable[tuple[T, TokenUsage]]],
    ) -> CallResult[T]:
        attempts: list[Attempt] = []
        last: AifleetError | None = None
        for i, (name, model) in enumerate(chain):
            provider = self.providers.get(name)
            if provider is None:
                attempts.append(Attempt(name, model, "circuit_open", error=CircuitOpen(f"{name}: no adapter")))
                continue
            n = 0
            while True:
                if deadline.expired():
                    return CallResult(None, DeadlineExceeded("deadline passed", provider=name), attempts)
                refused = await self._admit(name, request, deadline)
                if refused is not None:
                    attempts.append(self._skip(name, model, refused))
                    break
                n += 1
                started = self.clock.monotonic()
                cap, cap_is_deadline = self._attempt_cap(name, deadline, chain[i + 1 :])
                try:
                    async with asyncio.timeout(cap):
                        value, usage = await call(provider, model)
                except TimeoutError:
                    err: AifleetError = self._cut(name, cap, cap_is_deadline, "did not answer")
                    elapsed = self.clock.monotonic() - started
                    if cap_is_deadline:
                        attempts.append(Attempt(name, model, "deadline", elapsed, err))
                        return CallResult(None, err, attempts)
                    attempts.append(Attempt(name, model, "error", elapsed, err))
                    last = err
                    break  # its time is spent: fall back rather than retry here
                except asyncio.CancelledError:
                    self.breakers[name].release()
                    raise
                except AifleetError as exc:
                    self._judge(name, exc)
                    attempts.append(Attempt(name, model, "error", self.clock.monotonic() - started, exc))
                    last = exc
                    if _stops_chain(exc):
                        return CallResult(None, exc, attempts)
                    delay = self.policy.next_delay(exc, n, deadline.remaining(), self.rng)
                    if delay is None:
                        break
                    await self.clock.sleep(delay)
                    continue
                except Exception as exc:  # an adapter bug: record it, count it, and move on
                    log.exception("adapter %s raised an untyped error", name)
                    err = MalformedProviderResponse(f"{name} adapter failed: {type(exc).__name__}", provider=name)
                    self._judge(name, err)
                    attempts.append(Attempt(name, model, "error", self.clock.monotonic() - started, err))
                    last = err
                    break
                self._judge(name, None)
                attempts.append(Attempt(name, model, "ok", self.clock.monotonic() - started, usage=usage))
                return CallResult(value, None, attempts)
        return CallResult(None, self._final_error(attempts, last), attempts)


class ResilientStream:
    """An async iterator of ``StreamDelta``... then one ``StreamEnd`` or ``StreamError``.

    ``attempts`` fills in as the stream runs; ``provider``/``model`` name the attempt that streamed.
    Close it (``aclose``) if you stop iterating early.
    """

    def __init__(self, caller: ResilientCaller, request: Request, chain: Sequence[Route], deadline: Deadline):
        self._caller = caller
        self._request = request
        self._chain = list(chain)
        self._deadline = deadline
        self.attempts: list[Attempt] = []
        self.provider: str | None = None
        self.model: str | None = None
        self._gen: AsyncIterator[ResilientEvent] | None = None

    def __aiter__(self) -> AsyncIterator[ResilientEvent]:
        if self._gen is None:
            self._gen = self._events()
        return self._gen

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    async def _events(self) -> AsyncIterator[ResilientEvent]:
        c = self._caller
        deadline = self._deadline
        last: AifleetError | None = None
        for i, (name, model) in enumerate(self._chain):
            provider = c.providers.get(name)
            if provider is None:
                self.attempts.append(Attempt(name, model, "circuit_open", error=CircuitOpen(f"{name}: no adapter")))
                continue
            n = 0
            while True:
                if deadline.expired():
                    yield StreamError(DeadlineExceeded("deadline passed", provider=name))
                    return
                refused = await c._admit(name, self._request, deadline)
                if refused is not None:
                    self.attempts.append(c._skip(name, model, refused))
                    break
                n += 1
                self.provider, self.model = name, model
                outcome = _StreamAttempt(c, name, model, self.attempts)
                run = outcome.run(provider, self._request, deadline, self._chain[i + 1 :])
                try:
                    async for event in run:
                        yield event
                finally:
                    await run.aclose()  # type: ignore[attr-defined]
                if outcome.finished:
                    return
                err = outcome.error
                assert err is not None
                last = err
                if _stops_chain(err):
                    yield StreamError(err)
                    return
                if outcome.cut:
                    break  # its time is spent: fall back rather than retry here
                delay = c.policy.next_delay(err, n, deadline.remaining(), c.rng)
                if delay is None:
                    break
                await c.clock.sleep(delay)
        self.provider = self.model = None
        yield StreamError(c._final_error(self.attempts, last))


@dataclass
class _StreamAttempt:
    """One streaming call; yields what may go to the client and records how it ended."""

    caller: ResilientCaller
    name: str
    model: str
    sink: list[Attempt]
    attempt: Attempt | None = None
    error: AifleetError | None = None
    finished: bool = False
    cut: bool = False
    """The attempt was cut at its cap before the first delta (``ProviderTimeout``): do not retry it."""
    _committed: bool = field(default=False, init=False)
    _sent: list[str] = field(default_factory=list, init=False)

    def _record(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.sink.append(attempt)

    def _partial_usage(self, request: Request) -> TokenUsage | None:
        """What a stream that broke after output is billed: the providers charge for the prompt they read and
        the tokens they generated, but a broken stream never reports them, so both are estimated (the prompt
        as the router estimates it, the output from the text sent). None before any output."""
        if not self._committed:
            return None
        return TokenUsage(
            input_tokens=estimate_usage(request).input_tokens, output_tokens=approx_tokens("".join(self._sent))
        )

    async def run(
        self, provider: Provider, request: Request, deadline: Deadline, rest: Sequence[Route] = ()
    ) -> AsyncIterator[ResilientEvent]:
        """``rest``: the chain after this entry (an attempt keeps a share of the deadline for it until its
        first delta; once committed, only the request's deadline cuts it)."""
        c = self.caller
        clock = c.clock
        started = clock.monotonic()
        cap, cap_is_deadline = c._attempt_cap(self.name, deadline, rest)
        first_by = Deadline(started + cap, clock)
        first: float | None = None
        it = aiter(provider.stream(request, self.model))
        try:
            while True:
                try:
                    async with asyncio.timeout(deadline.remaining() if self._committed else first_by.remaining()):
                        event = await anext(it)
                except StopAsyncIteration:
                    raise MalformedProviderResponse(
                        f"{self.name} stream ended without its final event", provider=self.name
                    ) from None
                if isinstance(event, StreamDelta):
                    if first is None:
                        first = clock.monotonic() - started
                    self._committed = True
                    self._sent.append(event.text)
                    yield event
                elif isinstance(event, StreamEnd):
                    c._judge(self.name, None)
                    self._record(
                        Attempt(
                            self.name,
                            self.model,
                            "ok",
                            clock.monotonic() - started,
                            usage=event.usage,
                            first_delta_s=first,
                        )
                    )
                    self.finished = True
                    yield event
                    return
        except TimeoutError:
            if self._committed:  # output went out: cut by the request's deadline, no verdict on the provider
                c.breakers[self.name].release()
                err: AifleetError = DeadlineExceeded(
                    f"{self.name} stream did not finish before the deadline", provider=self.name
                )
            else:
                err = c._cut(self.name, cap, cap_is_deadline, "sent no output")
            elapsed = clock.monotonic() - started
            if self._committed or cap_is_deadline:
                usage = self._partial_usage(request)
                self._record(Attempt(self.name, self.model, "deadline", elapsed, err, usage, first_delta_s=first))
                self.finished = True
                yield StreamError(err)
            else:
                self._record(Attempt(self.name, self.model, "error", elapsed, err, first_delta_s=first))
                self.error = err
                self.cut = True
        except AifleetError as exc:
            c._judge(self.name, exc)
            elapsed = clock.monotonic() - started
            usage = self._partial_usage(request)
            self._record(Attempt(self.name, self.model, "error", elapsed, exc, usage, first_delta_s=first))
            if self._committed:
                self.finished = True
                if not isinstance(exc, StreamInterrupted):
                    exc = StreamInterrupted(f"{self.name} stream broke after output: {exc.message}", provider=self.name)
                yield StreamError(exc)
            else:
                self.error = exc
        except (GeneratorExit, asyncio.CancelledError):
            if self.attempt is not None:  # closed after its end: nothing left to record
                raise
            c.breakers[self.name].release()
            self._record(Attempt(self.name, self.model, "cancelled", clock.monotonic() - started, first_delta_s=first))
            raise
        except Exception as exc:  # an adapter bug
            log.exception("adapter %s stream raised an untyped error", self.name)
            err2: AifleetError = MalformedProviderResponse(
                f"{self.name} adapter failed: {type(exc).__name__}", provider=self.name
            )
            c._judge(self.name, err2)
            usage = self._partial_usage(request)
            self._record(
                Attempt(self.name, self.model, "error", clock.monotonic() - started, err2, usage, first_delta_s=first)
            )
            if self._committed:
                self.finished = True
                yield StreamError(StreamInterrupted(err2.message, provider=self.name))
            else:
                self.error = err2
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing %s stream failed", self.name, exc_info=True)
