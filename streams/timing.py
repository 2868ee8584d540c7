"""Wall-clock helpers for latencies measured against event timestamps."""

from __future__ import annotations

from datetime import datetime

from schemas.base import utc_now


def elapsed_ms_since(start: datetime) -> float:
    """Milliseconds from ``start`` to now, never negative (clocks of producers can run ahead)."""
    return max(0.0, (utc_now() - start).total_seconds() * 1000.0)
