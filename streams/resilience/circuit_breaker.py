"""A circuit breaker per provider, whose transitions are ``ProviderHealth`` events.

States: ``closed`` (calls flow; consecutive health failures are counted), ``open`` (no calls until
the recovery timeout has passed), ``half_open`` (exactly one probe call is let through; its
success closes the circuit, its failure re-opens it for another recovery timeout). Once the
recovery timeout has passed, ``state`` reads ``half_open`` so that routing offers the provider its
probe; ``allow`` makes the transition (and publishes it) when it grants the probe.

Every local transition is handed to ``on_transition`` as a ``schemas.health.ProviderHealth`` (the
dispatch agent publishes it on ``<prefix>.health``); transitions other workers published are
applied with ``apply(event)`` and never re-emitted. Applying a remote ``half_open`` keeps this
worker's circuit open (another worker's probe is in flight; its verdict arrives as ``closed`` or
``open``), so a cluster sends about one probe per recovery period, not one per worker.

Only health failures count (see ``is_health_failure``): a provider answering "bad request" or
"content filtered" is up. Rate limiting is neutral (``release``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from schemas.health import CircuitState, ProviderHealth
from streams.errors import (
    AifleetError,
    AuthenticationFailed,
    LocalCallError,
    MalformedProviderResponse,
    ModelNotFound,
    ProviderQuotaExhausted,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    StreamInterrupted,
)
from streams.resilience.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

HealthCallback = Callable[[ProviderHealth], None]

_HEALTH_FAILURES = (
    ProviderUnavailable,
    ProviderTimeout,
    MalformedProviderResponse,
    AuthenticationFailed,
    ModelNotFound,
    ProviderQuotaExhausted,
    StreamInterrupted,
)


def is_health_failure(exc: BaseException) -> bool:
    """True when an error says the provider is unhealthy (5xx, unreachable, timeouts, broken bodies, bad key,
    a missing model or deployment, an exhausted account)."""
    return isinstance(exc, _HEALTH_FAILURES)


def is_neutral(exc: BaseException) -> bool:
    """True when an error says nothing about health (rate limiting, our own gating or failures, cancellation)."""
    return isinstance(exc, RateLimited | LocalCallError) or not isinstance(exc, AifleetError)


class CircuitBreaker:
    """One provider's circuit, on one worker. Not thread-safe; use it from one event loop."""

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int = 5,
        recovery_timeout_s: float = 60.0,
        probe_timeout_s: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
        on_transition: HealthCallback | None = None,
        worker: str | None = None,
    ) -> None:
        """``probe_timeout_s``: a granted probe that never reports back frees its slot after this long
        (default: the recovery timeout), so a lost probe cannot wedge the circuit half-open."""
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.recovery_timeout_s = recovery_timeout_s
        self.probe_timeout_s = recovery_timeout_s if probe_timeout_s is None else probe_timeout_s
        self.worker = worker
        self.on_transition = on_transition
        self._clock = clock
        self._state: CircuitState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self._changed_wall: datetime | None = None

    # -- reading -----------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state (reading it never changes it).

        An open circuit whose recovery timeout has passed reads ``half_open``: its probe may go now,
        so routing must offer the provider again (routing skips ``open`` providers, and no probe could
        ever be sent if it skipped this one). The transition itself, and its health event, happen when
        ``allow`` grants the probe.
        """
        if self._state == "open" and self._clock.monotonic() - self._opened_at >= self.recovery_timeout_s:
            return "half_open"
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until this circuit would let a call through (0 when it would now)."""
        now = self._clock.monotonic()
        if self._state == "closed":
            return 0.0
        if self._state == "open":
            return max(0.0, self._opened_at + self.recovery_timeout_s - now)
        if self._probe_started is None:
            return 0.0
        return max(0.0, self._probe_started + self.probe_timeout_s - now)

    # -- gating ------------------------------------------------------------------------------
    def allow(self) -> bool:
        """May a call go to this provider now? A True in ``half_open`` is the one probe: report its outcome."""
        now = self._clock.monotonic()
        if self._state == "closed":
            return True
        if self._state == "open":
            if now - self._opened_at < self.recovery_timeout_s:
                return False
            self._transition("half_open", "recovery timeout passed; one probe allowed")
            self._probe_started = now
            return True
        # half_open: one probe at a time; a probe that never reported frees the slot after probe_timeout_s.
        if self._probe_started is not None and now - self._probe_started < self.probe_timeout_s:
            return False
        self._probe_started = now
        return True

    def record_success(self) -> None:
        """A permitted call succeeded (or failed in a way that proves the provider is up)."""
        if self._state == "half_open":
            self._failures = 0
            self._probe_started = None
            self._transition("closed", "probe succeeded")
        elif self._state == "closed":
            self._failures = 0
        # open: a late answer to a call let through before the circuit opened; it changes nothing.

    def record_failure(self, reason: str | None = None) -> None:
        """A permitted call failed for a health reason."""
        now = self._clock.monotonic()
        if self._state == "half_open":
            self._failures += 1
            self._probe_started = None
            self._opened_at = now
            self._transition("open", f"probe failed: {reason}" if reason else "probe failed")
        elif self._state == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._opened_at = now
                self._transition(
                    "open", f"{self._failures} consecutive failures" + (f"; last: {reason}" if reason else "")
                )

    def release(self) -> None:
        """A permitted call ended with no verdict (rate limited, cancelled, out of time): free the probe slot."""
        if self._state == "half_open":
            self._probe_started = None

    def record(self, error: BaseException | None) -> None:
        """Judge a finished call: None is a success; health failures count; neutral errors release."""
        if error is None:
            self.record_success()
        elif is_health_failure(error):
            self.record_failure(getattr(error, "reason", None) or type(error).__name__)
        elif is_neutral(error):
            self.release()
        else:
            self.record_success()

    # -- cluster -----------------------------------------------------------------------------
    def apply(self, event: ProviderHealth) -> bool:
        """Apply a transition another worker published. Returns whether it changed anything here.

        Events from this worker, for another provider, or older than this circuit's last change are
        ignored. Nothing is emitted for applied events.
        """
        if event.provider != self.provider or (self.worker is not None and event.worker == self.worker):
            return False
        if self._changed_wall is not None and event.ts < self._changed_wall:
            return False
        now = self._clock.monotonic()
        before = (self._state, self._failures)
        if event.state == "closed":
            self._state = "closed"
            self._failures = 0
            self._probe_started = None
        else:
            # open, or half_open elsewhere: hold our calls for a recovery timeout from now.
            self._state = "open"
            self._opened_at = now
            self._probe_started = None
            self._failures = max(self._failures, event.consecutive_failures)
        self._changed_wall = event.ts
        return (self._state, self._failures) != before

    # -- internals ---------------------------------------------------------------------------
    def _transition(self, state: CircuitState, reason: str) -> None:
        previous = self._state
        if previous == state:
            return
        self._state = state
        self._changed_wall = self._clock.wall()
        if self.on_transition is None:
            return
        event = ProviderHealth(
            provider=self.provider,
            state=state,
            previous_state=previous,
            consecutive_failures=self._failures,
            reason=reason,
            worker=self.worker,
            ts=self._changed_wall,
        )
        try:
            self.on_transition(event)
        except Exception:
            log.exception("circuit transition callback failed for %s", self.provider)


class BreakerBoard:
    """The circuit breakers of one worker, one per provider, created on first use with shared settings."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        recovery_timeout_s: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        on_transition: HealthCallback | None = None,
        worker: str | None = None,
    ) -> None:
        self._kwargs = {"failure_threshold": failure_threshold, "recovery_timeout_s": recovery_timeout_s}
        self._clock = clock
        self.on_transition = on_transition
        self.worker = worker
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, provider: str) -> CircuitBreaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = CircuitBreaker(
                provider,
                failure_threshold=int(self._kwargs["failure_threshold"]),
                recovery_timeout_s=float(self._kwargs["recovery_timeout_s"]),
                clock=self._clock,
                on_transition=self._emit,
                worker=self.worker,
            )
            self._breakers[provider] = breaker
        return breaker

    def _emit(self, event: ProviderHealth) -> None:
        if self.on_transition is not None:
            self.on_transition(event)

    def apply(self, event: ProviderHealth) -> bool:
        """Apply a ``ProviderHealth`` consumed from the health topic to the matching breaker."""
        return self[event.provider].apply(event)

    def states(self) -> dict[str, CircuitState]:
        """Every known provider's circuit state."""
        return {name: b.state for name, b in self._breakers.items()}
