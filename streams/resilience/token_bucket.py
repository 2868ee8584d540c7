"""Rate limits as buckets: at most ``limit`` units in any ``window_s`` window, at most ``burst`` at once.

A plain token bucket (capacity ``burst``, refill ``limit / window_s``) lets ``burst + limit`` through
in one window, over a provider's per-minute limit. ``TokenBucket`` therefore combines the bucket
(which spreads calls out: no more than ``burst`` back to back) with an exact sliding-window log
(which caps any window of ``window_s`` seconds at ``limit``). Steady throughput is ``limit`` per
window; the log holds one entry per grant still inside the window.

``acquire(tokens, timeout)`` waits at most ``timeout`` seconds (on the injected clock) for
capacity, else raises ``RateLimitSaturated`` with ``retry_after_s`` set to when capacity frees up
(``RequestExceedsRateLimit``, not retryable, when the request is larger than the bucket can ever grant).
``ProviderLimiter`` takes one request from the rpm bucket and ``tokens`` from the tpm bucket together.
"""

from __future__ import annotations

import math
from collections import deque

from streams.resilience.clock import SYSTEM_CLOCK, Clock
from streams.resilience.errors import RateLimitSaturated, RequestExceedsRateLimit

_EPS = 1e-9


class TokenBucket:
    """A rate limit of ``limit`` units per ``window_s`` seconds with at most ``burst`` units at once."""

    def __init__(
        self,
        limit: float,
        *,
        window_s: float = 60.0,
        burst: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "",
    ) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("limit and window_s must be positive")
        self.name = name
        self.window_s = window_s
        self._clock = clock
        self._log: deque[tuple[float, float]] = deque()
        self._in_window = 0.0
        self._updated = clock.monotonic()
        self.limit = float(limit)
        self.capacity = float(limit)
        self._level = 0.0
        self.set_limit(limit, burst, _initial=True)

    def set_limit(self, limit: float, burst: float | None = None, *, _initial: bool = False) -> None:
        """Change the limit (e.g. this worker's share after a rebalance); grants already made still count."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        self._refill(self._clock.monotonic())
        self.limit = float(limit)
        self.capacity = float(min(burst, limit)) if burst is not None and burst > 0 else float(limit)
        self._level = self.capacity if _initial else min(self._level, self.capacity)

    @property
    def rate_per_s(self) -> float:
        return self.limit / self.window_s

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.rate_per_s)
            self._updated = now
        horizon = now - self.window_s
        while self._log and self._log[0][0] <= horizon:
            self._in_window -= self._log.popleft()[1]
        if not self._log:
            self._in_window = 0.0

    def wait_time(self, tokens: float = 1.0) -> float:
        """Seconds until ``tokens`` could be granted (0: now; ``inf``: never, more than the bucket holds)."""
        if tokens > self.capacity + _EPS:
            return math.inf
        now = self._clock.monotonic()
        self._refill(now)
        bucket_wait = max(0.0, (tokens - self._level) / self.rate_per_s) if self._level + _EPS < tokens else 0.0
        window_wait = 0.0
        excess = self._in_window + tokens - self.limit
        if excess > _EPS:
            freed = 0.0
            for ts, n in self._log:
                freed += n
                if freed + _EPS >= excess:
                    window_wait = max(0.0, ts + self.window_s - now)
                    break
        return max(bucket_wait, window_wait)

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` now if they are available."""
        if self.wait_time(tokens) > 0.0:
            return False
        self._grant(tokens)
        return True

    def _grant(self, tokens: float) -> None:
        now = self._clock.monotonic()
        self._level = max(0.0, self._level - tokens)
        self._log.append((now, tokens))
        self._in_window += tokens

    async def acquire(self, tokens: float = 1.0, timeout: float = 0.0) -> None:
        """Take ``tokens``, waiting at most ``timeout`` seconds; else raise ``RateLimitSaturated``."""
        await acquire_all([(self, tokens)], timeout, self._clock, self.name)

    def charge(self, units: float) -> None:
        """Count ``units`` as granted now without taking them from the burst (they free after the window)."""
        if units <= 0:
            return
        self._refill(self._clock.monotonic())
        self._log.append((self._clock.monotonic(), units))
        self._in_window += units

    def granted_in_window(self) -> float:
        """Units granted within the last ``window_s`` seconds."""
        self._refill(self._clock.monotonic())
        return self._in_window


async def acquire_all(wants: list[tuple[TokenBucket, float]], timeout: float, clock: Clock, name: str = "") -> None:
    """Take from several buckets at once (all or nothing), waiting at most ``timeout`` seconds."""
    give_up_at = clock.monotonic() + max(0.0, timeout)
    while True:
        wait = max((bucket.wait_time(n) for bucket, n in wants), default=0.0)
        if wait <= 0.0:
            for bucket, n in wants:
                bucket._grant(n)
            return
        now = clock.monotonic()
        if math.isinf(wait):
            bucket, n = next((b, n) for b, n in wants if math.isinf(b.wait_time(n)))
            raise RequestExceedsRateLimit(
                f"{bucket.name or name or 'rate limit'}: the request needs {n:g} units but this worker's share "
                f"allows at most {bucket.capacity:g} at once, so it can never be sent here; ask for fewer tokens",
                provider=name or None,
            )
        if now + wait > give_up_at + _EPS:
            raise RateLimitSaturated(
                f"{name or 'rate limit'} saturated for {wait:.3f}s (waited at most {timeout:.3f}s)",
                provider=name or None,
                retry_after_s=wait,
            )
        await clock.sleep(wait)


class ProviderLimiter:
    """One worker's share of a provider's limits: requests per minute (with burst) and tokens per minute."""

    def __init__(
        self,
        provider: str,
        *,
        rpm: float,
        tpm: float,
        burst: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        margin_s: float = 0.0,
    ):
        """``margin_s`` lengthens the 60 s window the shares are counted over: a call reaches the provider a
        little after it was granted, by a delay that varies, so grants spread over 60 s can arrive within less
        than 60 s; a window longer by the largest such spread keeps every 60 s the provider sees within its
        limits."""
        self.provider = provider
        self._clock = clock
        window_s = 60.0 + margin_s
        self.requests = TokenBucket(rpm, window_s=window_s, burst=burst, clock=clock, name=f"{provider} rpm")
        self.tokens = TokenBucket(tpm, window_s=window_s, clock=clock, name=f"{provider} tpm")
        self.blocked = False
        """True while this worker's share is zero (it owns no partition with a share of the limits)."""

    async def acquire(self, tokens: int, timeout: float = 0.0) -> None:
        """Take one request and ``tokens`` tokens, waiting at most ``timeout`` s; else ``RateLimitSaturated``."""
        if self.blocked:
            raise RateLimitSaturated(
                f"{self.provider}: this worker holds no share of its limits", provider=self.provider
            )
        await acquire_all([(self.requests, 1.0), (self.tokens, float(tokens))], timeout, self._clock, self.provider)

    def resize(self, *, rpm: float, tpm: float, burst: float | None = None) -> None:
        """Apply a new share (after a rebalance changed the partitions this worker owns).

        A zero share (no owned partition, or a limit smaller than the partition count) blocks the
        limiter: every acquire is refused as rate-limited until a rebalance gives it a share again.

        A share that grows (partitions gained from another worker, or a blocked limiter given a share)
        has the gained part charged as used now: the previous owner's calls of the last window still
        count at the provider, so the gained capacity frees only one window later. The first share a
        freshly built limiter is given (a decrease from the catalog limits it was built with) charges
        nothing: a new process cannot know what the partitions' previous owner sent.
        """
        if rpm <= 0 or tpm <= 0 or (burst is not None and burst <= 0):
            self.blocked = True
            return
        old_rpm = 0.0 if self.blocked else self.requests.limit
        old_tpm = 0.0 if self.blocked else self.tokens.limit
        self.blocked = False
        self.requests.set_limit(rpm, burst)
        self.tokens.set_limit(tpm)
        self.requests.charge(rpm - old_rpm)
        self.tokens.charge(tpm - old_tpm)
