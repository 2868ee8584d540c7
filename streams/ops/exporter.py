"""The lag exporter: reads the worker group's consumer lag every few seconds and serves it on /metrics.

One exporter per deployment (not one per worker) keeps the series unique. Workers serve their own
metrics; Prometheus scrapes both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from streams.errors import AifleetError
from streams.metrics import AifleetMetrics, MetricsServer, start_metrics_server
from streams.ops import lag as lag_mod

log = logging.getLogger(__name__)


def collect_once(
    m: AifleetMetrics,
    bootstrap: str,
    group: str,
    topics: Sequence[str],
    *,
    client_config: Mapping[str, str] | None = None,
    timeout_s: float = 10.0,
) -> lag_mod.LagReport | None:
    """One collection: publish the report, or count the failure and keep the last values."""
    try:
        report = lag_mod.consumer_lag(bootstrap, group, topics, client_config=client_config, timeout_s=timeout_s)
    except AifleetError as exc:
        m.lag_collect_errors.labels(group).inc()
        log.warning("lag collection failed: %s", exc)
        return None
    m.set_consumer_lag(report)
    return report


def run_exporter(
    bootstrap: str,
    group: str,
    topics: Sequence[str],
    *,
    interval_s: float = 10.0,
    port: int | None = None,
    host: str | None = None,
    client_config: Mapping[str, str] | None = None,
    stop: threading.Event | None = None,
    metrics: AifleetMetrics | None = None,
) -> None:
    """Serve /metrics and refresh the lag every ``interval_s`` until ``stop`` is set."""
    m = metrics or AifleetMetrics()
    stop = stop or threading.Event()
    server: MetricsServer = start_metrics_server(port, host, registry=m.registry)
    log.warning("lag exporter for group %s on %s", group, server.url)
    try:
        while not stop.is_set():
            collect_once(m, bootstrap, group, topics, client_config=client_config, timeout_s=max(1.0, interval_s))
            stop.wait(interval_s)
    finally:
        server.close()
