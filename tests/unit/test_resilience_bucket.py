"""Token buckets on a simulated clock: window accuracy, burst, bounded waits; limit splits."""

from __future__ import annotations

import random
from bisect import bisect_right

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.errors import ErrorReason
from streams.catalog import ModelSpec, ProviderSpec
from streams.errors import AifleetError
from streams.resilience import FakeClock, ProviderLimiter, RateLimitSaturated, RequestExceedsRateLimit, TokenBucket
from streams.resilience.limits import provider_share, share_for, split


def max_in_any_window(times: list[float], weights: list[float], window: float) -> float:
    """The most units granted in any half-open window (t - window, t] (maxima occur at grant times)."""
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    best = 0.0
    for j, t in enumerate(times):
        i = bisect_right(times, t - window)
        best = max(best, prefix[j + 1] - prefix[i])
    return best


def test_600_rpm_never_grants_more_than_600_in_any_60s_window() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, window_s=60, burst=100, clock=clock)
    grants: list[float] = []
    for _ in range(30_000):  # a greedy caller polling every 10 ms for 5 simulated minutes
        while bucket.try_acquire():
            grants.append(clock.monotonic())
        clock.advance(0.01)
    assert max_in_any_window(grants, [1.0] * len(grants), 60.0) <= 600
    assert len(grants) >= 0.97 * 600 * 5  # and the limit is used, not starved
    assert sum(1 for t in grants if t == grants[0]) == 100  # burst: 100 at once, then spread out


def test_random_arrivals_and_sizes_respect_the_token_window() -> None:
    rng = random.Random(7)
    clock = FakeClock()
    bucket = TokenBucket(10_000, window_s=60, clock=clock)
    times, sizes = [], []
    for _ in range(5_000):
        clock.advance(rng.expovariate(20))
        n = rng.randint(1, 900)
        if bucket.try_acquire(n):
            times.append(clock.monotonic())
            sizes.append(float(n))
    assert max_in_any_window(times, sizes, 60.0) <= 10_000
    assert sum(sizes) > 0.9 * 10_000 * (times[-1] - times[0]) / 60


async def test_acquire_waits_a_bounded_time_or_raises_saturated() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, window_s=60, burst=2, clock=clock, name="p rpm")
    await bucket.acquire(1)
    await bucket.acquire(1)
    start = clock.monotonic()
    with pytest.raises(RateLimitSaturated) as caught:
        await bucket.acquire(1, timeout=0.5)
    assert isinstance(caught.value, AifleetError) and caught.value.retryable
    assert caught.value.retry_after_s == pytest.approx(1.0)
    assert clock.monotonic() == start  # gave up without waiting: the wait would pass the timeout
    await bucket.acquire(1, timeout=1.5)
    assert clock.monotonic() - start == pytest.approx(1.0)
    with pytest.raises(RequestExceedsRateLimit) as too_big:
        await bucket.acquire(5, timeout=100)
    assert too_big.value.retry_after_s is None
    assert not too_big.value.retryable and too_big.value.reason == ErrorReason.EXCEEDS_RATE_LIMIT
    assert "can never be sent" in too_big.value.message


async def test_provider_limiter_takes_requests_and_tokens_together() -> None:
    clock = FakeClock()
    limiter = ProviderLimiter("p", rpm=100, tpm=1000, burst=10, clock=clock)
    await limiter.acquire(600)
    with pytest.raises(RateLimitSaturated):
        await limiter.acquire(600, timeout=0)
    # the refused call took nothing: the request bucket still has 9 of its 10 burst
    assert limiter.requests.granted_in_window() == 1
    assert limiter.tokens.granted_in_window() == 600
    await limiter.acquire(400)
    limiter.resize(rpm=50, tpm=500, burst=5)
    with pytest.raises(RateLimitSaturated):
        await limiter.acquire(1, timeout=0)  # 1000 tokens already inside the window, share is now 500


def test_split_is_deterministic_and_sums_to_the_limit() -> None:
    assert split(10, 4) == [3, 3, 2, 2]
    assert split(3, 5) == [1, 1, 1, 0, 0]
    assert share_for(10, 4, [0, 3]) == 5
    spec = ProviderSpec(
        adapter="openai",
        base_url="http://x",
        rpm=10_000,
        tpm=2_000_000,
        burst=100,
        models=[
            ModelSpec(
                name="m", input_per_mtok=0, output_per_mtok=0, quality=0.5, capabilities=["chat"], context_window=8
            )
        ],
    )
    shares = [provider_share(spec, 12, owned) for owned in ([0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11])]
    assert sum(s.rpm for s in shares) == 10_000
    assert sum(s.tpm for s in shares) == 2_000_000
    assert sum(s.burst for s in shares) == 100
    with pytest.raises(ValueError, match="outside"):
        share_for(10, 4, [4])


@given(
    limit=st.integers(min_value=0, max_value=10**7),
    parts=st.integers(min_value=1, max_value=256),
    seed=st.integers(min_value=0, max_value=2**32),
    workers=st.integers(min_value=1, max_value=16),
)
def test_any_assignment_of_partitions_never_exceeds_the_limit(limit: int, parts: int, seed: int, workers: int) -> None:
    rng = random.Random(seed)
    owner = [rng.randrange(workers) for _ in range(parts)]
    total = sum(share_for(limit, parts, [p for p in range(parts) if owner[p] == w]) for w in range(workers))
    assert total == limit
    assert max(split(limit, parts)) - min(split(limit, parts)) <= 1


async def test_a_zero_share_blocks_the_limiter_until_a_rebalance_gives_it_one_again() -> None:
    clock = FakeClock()
    limiter = ProviderLimiter("openai", rpm=60, tpm=6000, burst=5, clock=clock)
    limiter.resize(rpm=0, tpm=0, burst=0)  # the worker owns no partition after a rebalance
    with pytest.raises(RateLimitSaturated):
        await limiter.acquire(10)
    limiter.resize(rpm=30, tpm=3000, burst=2)
    # the share it gained was its previous owner's: charged for one window, then usable
    with pytest.raises(RateLimitSaturated):
        await limiter.acquire(10)
    clock.advance(60.0)
    await limiter.acquire(10)


async def test_a_grown_share_charges_the_gained_part_for_one_window() -> None:
    # A owns 2 of 4 partitions of a 600 rpm provider (300), then gains the other 2 from B, whose calls of
    # the last window still count at the provider: the gained 300 free only a window after the rebalance.
    clock = FakeClock(start=0.0)
    a = ProviderLimiter("openai", rpm=600, tpm=10**9, burst=600, clock=clock)
    a.resize(rpm=300, tpm=10**8, burst=300)  # the first share: nothing charged
    assert a.requests.granted_in_window() == 0
    clock.advance(30)
    a.resize(rpm=600, tpm=2 * 10**8, burst=600)  # B left at t=30 after sending its 300
    assert a.requests.granted_in_window() == 300 and a.tokens.granted_in_window() == 10**8
    sent = 0
    while clock.monotonic() < 89.0:
        try:
            await a.acquire(1)
            sent += 1
        except RateLimitSaturated:
            clock.advance(0.5)
    assert sent <= 300  # with B's 300 in [30, 90): never over 600 in the window
    clock.advance(1.0)  # t >= 90: the charge expired
    assert a.requests.wait_time(1) <= 1.0


async def test_a_margin_keeps_every_60s_at_the_provider_within_the_limit_despite_a_varying_delay() -> None:
    """Calls reach the provider a varying delay after their grant: grants spread over 60 s can arrive within
    less. With the margin as large as that spread, every 60 s window of arrivals stays within the limit."""
    rng = random.Random(7)
    for margin, must_hold in ((0.0, False), (1.0, True)):
        clock = FakeClock()
        limiter = ProviderLimiter("p", rpm=600, tpm=10**9, burst=20, clock=clock, margin_s=margin)
        arrivals: list[float] = []
        for _ in range(30_000):  # a greedy caller polling every 10 ms for 5 simulated minutes
            while True:
                try:
                    await limiter.acquire(1, timeout=0)
                except RateLimitSaturated:
                    break
                arrivals.append(clock.monotonic() + rng.uniform(0.0, 0.9))  # a delay that varies by < 1 s
            clock.advance(0.01)
        arrivals.sort()
        peak = max_in_any_window(arrivals, [1.0] * len(arrivals), 60.0)
        assert (peak <= 600) is must_hold, (margin, peak)
    assert len(arrivals) >= 0.95 * 600 * 5  # the margin costs little of the limit
