"""Observed latency per provider and model; its p95 breaks ties between equally cheap routes."""

from __future__ import annotations

import math
from collections import deque


class LatencyTracker:
    """The last ``window`` latencies of each provider and of each (provider, model), and their p95.

    Feed it from responses or usage events (``observe``); routing reads ``p95``. One per worker:
    latency is a local observation, not a shared fact, and a few hundred samples settle quickly.
    """

    def __init__(self, window: int = 512) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._window = window
        self._samples: dict[tuple[str, str | None], deque[float]] = {}

    def observe(self, provider: str, latency_ms: float, model: str | None = None) -> None:
        """Record one call's latency (ms)."""
        keys = [(provider, None)] if model is None else [(provider, None), (provider, model)]
        for key in keys:
            self._samples.setdefault(key, deque(maxlen=self._window)).append(float(latency_ms))

    def p95(self, provider: str, model: str | None = None) -> float | None:
        """The nearest-rank 95th percentile of the model's samples, else the provider's; None if none."""
        samples = self._samples.get((provider, model)) if model is not None else None
        if not samples:
            samples = self._samples.get((provider, None))
        if not samples:
            return None
        ordered = sorted(samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
