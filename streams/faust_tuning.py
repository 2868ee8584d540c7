"""One correction to faust-streaming's Kafka consumer, applied before any app starts.

faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. aiokafka keeps one fetch in
flight per broker and does not fetch a partition again while that request is out, so when the
request covers only idle partitions (health, changelog, infer) the broker holds it for the full
1.5 s, and records arriving on busy partitions wait behind it: about 1.5 s per pipeline hop. A
short long-poll keeps idle topics cheap and busy ones flowing.

``apply`` also installs ``streams.faust_acks``, the at-least-once repairs to faust's offset bookkeeping.
"""

from __future__ import annotations

from typing import Any

FETCH_MAX_WAIT_MS = 20
_applied = False


def apply(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Patch faust's consumer factory so every worker consumer long-polls at most ``fetch_max_wait_ms``."""
    global _applied  # noqa: PLW0603 - a process-wide patch, applied once
    from streams import faust_acks

    faust_acks.apply()
    if _applied:
        return
    from faust.transport.drivers import aiokafka as driver

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by aiokafka when it builds its Fetcher
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    _applied = True
