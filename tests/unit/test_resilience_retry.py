"""Retry policy: retryable errors only, full-jitter backoff, Retry-After honoured, deadline never passed."""

from __future__ import annotations

import random

import pytest

from streams.errors import BadRequest, DeadlineExceeded, ProviderUnavailable, RateLimited
from streams.resilience import Deadline, FakeClock, RetryPolicy, call_with_retries


def test_only_retryable_errors_within_max_attempts() -> None:
    policy, rng = RetryPolicy(max_attempts=3), random.Random(1)
    assert policy.next_delay(BadRequest("x"), 1, 100, rng) is None
    assert policy.next_delay(ValueError("x"), 1, 100, rng) is None
    assert policy.next_delay(ProviderUnavailable("x"), 1, 100, rng) is not None
    assert policy.next_delay(ProviderUnavailable("x"), 3, 100, rng) is None


def test_full_jitter_backoff_stays_under_the_exponential_cap() -> None:
    policy, rng = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, multiplier=2.0), random.Random(3)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        samples = [policy.backoff_s(attempt, rng) for _ in range(2000)]
        assert min(samples) >= 0.0 and max(samples) <= cap
        assert max(samples) > 0.9 * cap and min(samples) < 0.1 * cap  # full jitter spans the range


def test_retry_after_is_a_floor_and_the_deadline_a_ceiling() -> None:
    policy, rng = RetryPolicy(max_delay_s=0.5, max_retry_after_s=30), random.Random(5)
    assert policy.next_delay(RateLimited("x", retry_after_s=2.0), 1, 100, rng) == 2.0
    assert policy.next_delay(RateLimited("x", retry_after_s=2.0), 1, 2.0, rng) is None  # would end at the deadline
    assert policy.next_delay(RateLimited("x", retry_after_s=31.0), 1, 100, rng) is None  # go elsewhere instead
    assert policy.next_delay(ProviderUnavailable("x"), 1, 0.0, rng) is None


async def test_call_with_retries_sleeps_retry_after_then_succeeds() -> None:
    clock = FakeClock()
    errors = [RateLimited("slow down", retry_after_s=2.0), ProviderUnavailable("503")]

    async def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    out = await call_with_retries(flaky, policy=RetryPolicy(max_attempts=3), deadline=Deadline.after(30, clock))
    assert out == "ok"
    assert clock.slept[0] >= 2.0 and len(clock.slept) == 2


async def test_call_with_retries_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    calls = 0

    async def always_limited() -> str:
        nonlocal calls
        calls += 1
        raise RateLimited("x", retry_after_s=4.0)

    with pytest.raises(RateLimited):
        await call_with_retries(always_limited, policy=RetryPolicy(max_attempts=10), deadline=Deadline.after(10, clock))
    assert calls == 3  # at t=0, 4, 8; a wait to t=12 would pass the deadline at t=10
    assert clock.monotonic() - 1000.0 <= 10.0
    with pytest.raises(DeadlineExceeded):
        await call_with_retries(always_limited, policy=RetryPolicy(), deadline=Deadline.after(0, clock))
