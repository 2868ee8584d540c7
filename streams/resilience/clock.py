"""Time, injectable: every resilience primitive reads the clock through ``Clock`` so tests are exact.

``SystemClock`` is the real one (``time.monotonic``, ``asyncio.sleep``). ``FakeClock`` is a
virtual clock for tests: time moves only when a test advances it or when something sleeps on it
(a sleep advances the clock by its duration and returns at once; sleeps never return early).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock, a wall clock, and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    def wall(self) -> datetime:
        """The current UTC time (for event timestamps)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait this long."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A virtual clock for deterministic tests. ``advance`` moves it; ``sleep`` jumps it forward."""

    def __init__(self, start: float = 1000.0, wall_start: datetime | None = None) -> None:
        self._now = start
        self._start = start
        self._wall_start = wall_start or datetime(2025, 1, 1, tzinfo=UTC)
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> datetime:
        return self._wall_start + timedelta(seconds=self._now - self._start)

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Deadline:
    """An absolute point on a clock after which nobody waits for the answer."""

    at: float
    clock: Clock = SYSTEM_CLOCK

    @classmethod
    def after(cls, seconds: float, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(clock.monotonic() + seconds, clock)

    @classmethod
    def at_wall(cls, when: datetime, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        """A deadline at a wall-clock time (e.g. ``Request.deadline``), mapped onto the monotonic clock."""
        return cls(clock.monotonic() + (when - clock.wall()).total_seconds(), clock)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - self.clock.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0
