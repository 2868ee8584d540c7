"""Metrics from what the stages publish: one place reads the outgoing events and records them."""

from __future__ import annotations

from schemas.health import ProviderHealth
from schemas.response import Response
from schemas.usage import UsageEvent
from streams import metrics
from streams.publisher import Outbox


def observe_outbox(stage: str, outbox: Outbox) -> None:
    """Count responses by status, provider attempts, their latency, errors, tokens and cost."""
    for _topic, event, _key in outbox:
        if isinstance(event, Response):
            status = event.error.reason.value if event.error else event.status
            metrics.record_request(stage, status)
            if event.latency is not None:
                metrics.observe_request_latency(
                    event.latency.total_ms / 1000, "ok" if event.status != "error" else "error"
                )
        elif isinstance(event, UsageEvent) and event.status != "rejected":  # no call: nothing of the provider's
            metrics.observe_provider_latency(event.provider, event.model, event.latency_ms / 1000)
            if event.error_reason is not None:
                metrics.record_provider_error(event.provider, event.error_reason.value)
            metrics.add_tokens(event.provider, event.input_tokens, event.output_tokens)
            metrics.add_cost(event.tenant, event.provider, event.cost_usd)


def observe_health(event: ProviderHealth) -> None:
    """Export a circuit transition as the provider's circuit-state gauge."""
    metrics.set_circuit_state(event.provider, event.state)
