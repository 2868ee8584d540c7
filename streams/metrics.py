"""Prometheus metrics of a worker: what the pipeline counts, and the endpoint that serves them.

The agents call the module-level functions (``record_request``, ``observe_provider_latency``, ...),
which write to one process-wide :class:`AifleetMetrics` on its own registry. Tests build their own
``AifleetMetrics(CollectorRegistry())`` and read it back.

Labels are bounded and safe: only short identifier-like values are kept (``[A-Za-z0-9_.:/-]``,
at most 64 characters); anything else (a prompt, a sentence, an error message) becomes
``"invalid"``, and values that look like API keys become ``"redacted"``. Tenants are capped at
``max_tenants`` distinct values per process (the rest count as ``"other"``) so one noisy client
cannot blow up the series count.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from streams.redact import looks_like_key

if TYPE_CHECKING:
    from streams.ops.lag import LagReport

CircuitState = Literal["closed", "open", "half_open"]

DEFAULT_METRICS_PORT = 9464
METRICS_PORT_ENV = "AIFLEET_METRICS_PORT"
METRICS_HOST_ENV = "AIFLEET_METRICS_HOST"

#: Gauge values of ``aifleet_circuit_state``: dashboards map them back to names.
CIRCUIT_STATE_VALUE: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}

#: Latency buckets (seconds): sub-millisecond cache hits up to minute-long generations.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")

INVALID = "invalid"
REDACTED = "redacted"
OTHER = "other"


def safe_label(value: object) -> str:
    """``value`` as a label value when it is a short identifier; ``"invalid"`` or ``"redacted"`` otherwise."""
    text = str(value.value if hasattr(value, "value") else value)
    if not _SAFE_LABEL.match(text):
        return INVALID
    if looks_like_key(text):  # a provider credential must never become a label, even by accident
        return REDACTED
    return text


class AifleetMetrics:
    """Every aifleet metric, registered on one registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_tenants: int = 1000, process_metrics: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.max_tenants = max_tenants
        self._tenants: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Counter(
            "aifleet_requests", "Records handled, by pipeline stage and outcome.", ["stage", "status"], registry=r
        )
        self.request_latency = Histogram(
            "aifleet_request_duration_seconds",
            "End-to-end latency: request created to terminal response published.",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_latency = Histogram(
            "aifleet_provider_duration_seconds",
            "Latency of one provider call (one attempt).",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "aifleet_provider_errors", "Failed provider calls, by typed reason.", ["provider", "reason"], registry=r
        )
        self.circuit_state = Gauge(
            "aifleet_circuit_state",
            "Circuit breaker state per provider: 0 closed, 1 half_open, 2 open.",
            ["provider"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "aifleet_consumer_lag",
            "Records not yet committed by the consumer group (end offset - committed offset).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.lag_collect_errors = Counter(
            "aifleet_lag_collect_errors", "Failed attempts to read the consumer group's lag.", ["group"], registry=r
        )
        self.cache_lookups = Counter(
            "aifleet_cache_lookups",
            "Cache lookups, by cache (exact, semantic) and result.",
            ["cache", "result"],
            registry=r,
        )
        self.cost = Counter(
            "aifleet_cost_usd", "Provider cost charged, in US dollars.", ["tenant", "provider"], registry=r
        )
        self.cost_saved = Counter(
            "aifleet_cost_saved_usd", "Provider cost avoided by cache hits, in US dollars.", ["tenant"], registry=r
        )
        self.tokens = Counter("aifleet_tokens", "Tokens reported by providers.", ["provider", "direction"], registry=r)
        self.recovery_reseeks = Counter(
            "aifleet_recovery_reseeks",
            "Re-seeks of a table changelog partition whose recovery had stalled (streams.recovery_watch).",
            ["topic"],
            registry=r,
        )
        self.recovery_stuck = Gauge(
            "aifleet_recovery_stuck_partitions",
            "Changelog partitions still stalled in recovery after the watchdog's last allowed re-seek.",
            ["topic"],
            registry=r,
        )

    # -- labels -----------------------------------------------------------------------------------
    def tenant_label(self, tenant: str) -> str:
        """The tenant's label value: itself while under the cap, ``"other"`` beyond it."""
        label = safe_label(tenant)
        if label in (INVALID, REDACTED):
            return label
        with self._lock:
            if label in self._tenants:
                return label
            if len(self._tenants) >= self.max_tenants:
                return OTHER
            self._tenants.add(label)
            return label

    # -- recording --------------------------------------------------------------------------------
    def record_request(self, stage: str, status: str) -> None:
        """One record left ``stage`` with ``status`` (ok, error, cached, rejected, dlq, retried, ...)."""
        self.requests.labels(safe_label(stage), safe_label(status)).inc()

    def observe_request_latency(self, seconds: float, status: str = "ok") -> None:
        """End-to-end latency of one request that reached a terminal response."""
        if _finite_non_negative(seconds):
            self.request_latency.labels(safe_label(status)).observe(seconds)

    def observe_provider_latency(self, provider: str, model: str, seconds: float) -> None:
        """Latency of one provider call (success or failure)."""
        if _finite_non_negative(seconds):
            self.provider_latency.labels(safe_label(provider), safe_label(model)).observe(seconds)

    def record_provider_error(self, provider: str, reason: str) -> None:
        """A provider call failed; ``reason`` is an ``ErrorReason`` value (never the error message)."""
        self.provider_errors.labels(safe_label(provider), safe_label(reason)).inc()

    def set_circuit_state(self, provider: str, state: CircuitState) -> None:
        """The provider's breaker is now ``state`` (closed, half_open, open)."""
        if state not in CIRCUIT_STATE_VALUE:
            raise ValueError(f"unknown circuit state {state!r}")
        self.circuit_state.labels(safe_label(provider)).set(CIRCUIT_STATE_VALUE[state])

    def record_cache_lookup(self, cache: str, hit: bool) -> None:
        """One lookup in the ``exact`` or ``semantic`` cache."""
        self.cache_lookups.labels(safe_label(cache), "hit" if hit else "miss").inc()

    def add_cost(self, tenant: str, provider: str, usd: float) -> None:
        """Cost charged for one provider call (negative or non-finite amounts are ignored)."""
        if _finite_non_negative(usd) and usd > 0:
            self.cost.labels(self.tenant_label(tenant), safe_label(provider)).inc(usd)

    def add_cost_saved(self, tenant: str, usd: float) -> None:
        """Cost a cache hit avoided."""
        if _finite_non_negative(usd) and usd > 0:
            self.cost_saved.labels(self.tenant_label(tenant)).inc(usd)

    def add_tokens(self, provider: str, input_tokens: int, output_tokens: int) -> None:
        """Token counts a provider reported for one call."""
        if input_tokens > 0:
            self.tokens.labels(safe_label(provider), "input").inc(input_tokens)
        if output_tokens > 0:
            self.tokens.labels(safe_label(provider), "output").inc(output_tokens)

    def set_consumer_lag(self, report: LagReport) -> None:
        """Publish a lag report: one gauge per (group, topic, partition)."""
        group = safe_label(report.group)
        for p in report.partitions:
            self.consumer_lag.labels(group, safe_label(p.topic), str(p.partition)).set(p.lag)

    def record_recovery_reseek(self, topic: str) -> None:
        """The recovery watchdog re-seeked a stalled partition of this changelog topic."""
        self.recovery_reseeks.labels(safe_label(topic)).inc()

    def set_recovery_stuck(self, topic: str, partitions: int) -> None:
        """How many partitions of this changelog topic are stalled beyond the watchdog's re-seeks."""
        self.recovery_stuck.labels(safe_label(topic)).set(partitions)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def _finite_non_negative(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x >= 0


# -- the process-wide instance and the functions the agents call ----------------------------------
_default: AifleetMetrics | None = None
_default_lock = threading.Lock()


def metrics() -> AifleetMetrics:
    """The process-wide metrics (created on first use)."""
    global _default  # noqa: PLW0603 - one registry per process, created lazily
    with _default_lock:
        if _default is None:
            _default = AifleetMetrics()
        return _default


def record_request(stage: str, status: str) -> None:
    """Count a record leaving ``stage`` with ``status``."""
    metrics().record_request(stage, status)


def observe_request_latency(seconds: float, status: str = "ok") -> None:
    """Observe one request's end-to-end latency."""
    metrics().observe_request_latency(seconds, status)


def observe_provider_latency(provider: str, model: str, seconds: float) -> None:
    """Observe one provider call's latency."""
    metrics().observe_provider_latency(provider, model, seconds)


def record_provider_error(provider: str, reason: str) -> None:
    """Count a failed provider call by reason."""
    metrics().record_provider_error(provider, reason)


def set_circuit_state(provider: str, state: CircuitState) -> None:
    """Set a provider's circuit state gauge."""
    metrics().set_circuit_state(provider, state)


def record_cache_lookup(cache: str, hit: bool) -> None:
    """Count a cache lookup (hit or miss)."""
    metrics().record_cache_lookup(cache, hit)


def add_cost(tenant: str, provider: str, usd: float) -> None:
    """Add a provider call's cost."""
    metrics().add_cost(tenant, provider, usd)


def add_cost_saved(tenant: str, usd: float) -> None:
    """Add the cost a cache hit avoided."""
    metrics().add_cost_saved(tenant, usd)


def add_tokens(provider: str, input_tokens: int, output_tokens: int) -> None:
    """Add a provider call's token counts."""
    metrics().add_tokens(provider, input_tokens, output_tokens)


def record_recovery_reseek(topic: str) -> None:
    """Count a re-seek of a stalled changelog partition."""
    metrics().record_recovery_reseek(topic)


def set_recovery_stuck(topic: str, partitions: int) -> None:
    """Set how many of a changelog topic's partitions stay stalled after the watchdog's re-seeks."""
    metrics().set_recovery_stuck(topic, partitions)


def set_consumer_lag(report: LagReport) -> None:
    """Publish a consumer-lag report."""
    metrics().set_consumer_lag(report)


def collect_consumer_lag(
    bootstrap: str,
    group: str,
    topics: Iterable[str],
    *,
    client_config: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> LagReport:
    """Read the group's lag from the cluster (committed vs end offsets), publish it, and return it."""
    from streams.ops.lag import consumer_lag

    report = consumer_lag(bootstrap, group, list(topics), client_config=client_config, timeout_s=timeout_s)
    set_consumer_lag(report)
    return report


# -- serving ----------------------------------------------------------------------------------------
@dataclass
class MetricsServer:
    """A running /metrics endpoint."""

    host: str
    port: int
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(
    port: int | None = None, host: str | None = None, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve /metrics in a daemon thread; returns the server (``port=0`` picks a free port).

    ``port`` defaults to ``$AIFLEET_METRICS_PORT`` or 9464. ``host`` defaults to
    ``$AIFLEET_METRICS_HOST`` or 127.0.0.1; containers set ``AIFLEET_METRICS_HOST=0.0.0.0`` so that
    Prometheus can reach them over the container network.
    """
    if port is None:
        port = int(os.environ.get(METRICS_PORT_ENV, DEFAULT_METRICS_PORT))
    host = host or os.environ.get(METRICS_HOST_ENV, "127.0.0.1")
    server, thread = start_http_server(port, addr=host, registry=registry or metrics().registry)
    return MetricsServer(host=host, port=server.server_port, server=server, thread=thread)
