"""When to try a provider again, and after how long.

Only errors whose ``retryable`` is true are retried. The wait is exponential backoff with full
jitter (uniform in ``[0, min(max_delay_s, base_delay_s * multiplier ** (attempt - 1))]``), but never
shorter than the provider's ``retry_after_s``; a wait that would end at or after the deadline, or a
``Retry-After`` longer than ``max_retry_after_s``, means "do not retry here" (fall back instead).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from streams.errors import AifleetError, DeadlineExceeded
from streams.resilience.clock import Deadline

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry settings for one provider within one request."""

    max_attempts: int = 3
    """Calls to one provider per request, the first included (1: never retry)."""
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    multiplier: float = 2.0
    max_retry_after_s: float = 30.0
    """A provider asking us to wait longer than this is treated as not retryable here."""

    @staticmethod
    def retryable(error: BaseException) -> bool:
        """Whether a retry can help, per the error's own ``retryable``."""
        return isinstance(error, AifleetError) and error.retryable

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """The jittered backoff after the ``attempt``-th call failed (attempt counts from 1)."""
        cap = min(self.max_delay_s, self.base_delay_s * self.multiplier ** max(0, attempt - 1))
        return rng.uniform(0.0, cap)

    def next_delay(self, error: BaseException, attempt: int, remaining_s: float, rng: random.Random) -> float | None:
        """Seconds to wait before calling again after the ``attempt``-th failure, or None: do not retry."""
        if not self.retryable(error) or attempt >= self.max_attempts:
            return None
        delay = self.backoff_s(attempt, rng)
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after is not None:
            if retry_after > self.max_retry_after_s:
                return None
            delay = max(delay, retry_after)
        if delay >= remaining_s:
            return None
        return delay


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` until it succeeds, the policy says stop, or the deadline would pass; raise the last error."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    attempt = 0
    while True:
        if deadline.expired():
            raise DeadlineExceeded("deadline passed before the call could be made")
        attempt += 1
        try:
            return await fn()
        except AifleetError as exc:
            delay = policy.next_delay(exc, attempt, deadline.remaining(), rng)
            if delay is None:
                raise
            await deadline.clock.sleep(delay)
