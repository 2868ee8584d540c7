"""Synthetic usage events for seeding and benchmarking: deterministic for a given seed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Literal

from schemas.errors import ErrorReason
from schemas.usage import UsageEvent

# provider -> (model, input $/Mtok, output $/Mtok, typical latency ms)
MODELS: dict[str, list[tuple[str, float, float, float]]] = {
    "openai": [("gpt-4o-mini", 0.15, 0.60, 600.0), ("gpt-4o", 2.50, 10.00, 1400.0)],
    "anthropic": [("claude-3-5-haiku", 0.80, 4.00, 700.0), ("claude-sonnet-4", 3.00, 15.00, 1800.0)],
    "azure_openai": [("gpt-4o-mini", 0.15, 0.60, 650.0)],
    "ollama": [("llama3.1:8b", 0.0, 0.0, 900.0)],
}
ERROR_REASONS = (ErrorReason.RATE_LIMITED, ErrorReason.TIMEOUT, ErrorReason.PROVIDER_UNAVAILABLE)


def synthetic_events(
    n: int,
    *,
    seed: int = 0,
    end: datetime | None = None,
    span: timedelta = timedelta(days=7),
    tenants: int = 20,
    prefix: str = "syn",
) -> Iterator[UsageEvent]:
    """``n`` plausible usage events spread over ``span`` before ``end``; costs have 6 decimals."""
    rng = random.Random(seed)  # noqa: S311 (synthetic data, not security)
    end = end or datetime.now(UTC)
    start = end - span
    span_ms = int(span.total_seconds() * 1000)
    providers = list(MODELS)
    for i in range(n):
        provider = providers[rng.randrange(len(providers))]
        model, in_price, out_price, typical = MODELS[provider][rng.randrange(len(MODELS[provider]))]
        input_tokens = rng.randint(20, 4000)
        output_tokens = rng.randint(1, 1000)
        roll = rng.random()
        status: Literal["ok", "error", "cached"] = "error" if roll < 0.03 else "cached" if roll < 0.13 else "ok"
        cost = round((input_tokens * in_price + output_tokens * out_price) / 1e6, 6)
        yield UsageEvent(
            event_id=f"{prefix}-{seed}-{i}:1",
            request_id=f"{prefix}-{seed}-{i}",
            tenant=f"tenant-{rng.randrange(tenants):02d}",
            provider=provider,
            model=model,
            status=status,
            error_reason=ERROR_REASONS[i % len(ERROR_REASONS)] if status == "error" else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens if status == "ok" else 0,
            cost_usd=cost if status == "ok" else 0.0,
            saved_cost_usd=cost if status == "cached" else 0.0,
            latency_ms=round(rng.lognormvariate(0, 0.5) * typical, 3) if status != "cached" else 5.0,
            ts=start + timedelta(milliseconds=rng.randrange(span_ms)),
        )
