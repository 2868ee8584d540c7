"""What this worker believes about each provider's health, fed by the health topic."""

from __future__ import annotations

from schemas.health import CircuitState, ProviderHealth


class HealthView:
    """Circuit state per provider as last published on the health topic (closed when never heard of)."""

    def __init__(self) -> None:
        self._state: dict[str, CircuitState] = {}

    def apply(self, event: ProviderHealth) -> None:
        """Take a transition published by any worker."""
        self._state[event.provider] = event.state

    def state(self, provider: str) -> CircuitState:
        return self._state.get(provider, "closed")

    def available(self, provider: str) -> bool:
        """Open circuits are skipped by routing; half-open ones admit their probe."""
        return self.state(provider) != "open"
