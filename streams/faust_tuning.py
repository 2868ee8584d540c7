"""One correction to faust-streaming's Kafka consumer, applied before any app starts.

faust hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer. aiokafka keeps one fetch in
flight per broker and does not fetch a partition again while that request is out, so when the
request covers only idle partitions (health, changelog, infer) the broker holds it for the full
1.5 s, and records arriving on busy partitions wait behind it: about 1.5 s per pipeline hop. A
short long-poll keeps idle topics cheap and busy ones flowing.

``apply`` also makes faust's producers idempotent (faust only does so inside transactions), and installs
``streams.faust_acks``, the at-least-once repairs to faust's offset bookkeeping.
"""

from __future__ import annotations

from typing import Any

FETCH_MAX_WAIT_MS = 20
_applied = False
_fetch = {"max_wait_ms": FETCH_MAX_WAIT_MS, "min_bytes": 1}


def apply(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS, fetch_min_bytes: int = 1) -> None:
    """Patch faust's consumer factory: every worker consumer long-polls at most ``fetch_max_wait_ms``.

    ``fetch_min_bytes`` > 1 lets the broker hold a fetch until that much data is there (or the wait is
    over): fewer, fuller fetches, which costs the broker less CPU per record and adds up to the wait
    in latency per hop. The last call's values apply to consumers created after it.
    """
    global _applied  # noqa: PLW0603 - a process-wide patch, applied once
    from streams import faust_acks

    faust_acks.apply()
    _fetch.update(max_wait_ms=fetch_max_wait_ms, min_bytes=fetch_min_bytes)
    if _applied:
        return
    from faust.transport.drivers import aiokafka as driver

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        # read by aiokafka when it builds its Fetcher (at consumer start)
        consumer._fetch_max_wait_ms = _fetch["max_wait_ms"]
        consumer._fetch_min_bytes = _fetch["min_bytes"]
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]

    original_extra = driver.Producer._settings_extra

    def _settings_extra(self: Any) -> Any:
        # faust only turns idempotence on inside transactions; without it a produce retried after a
        # lost acknowledgement (a broker restart, a timeout) writes a second response or usage event.
        return {**original_extra(self), "acks": "all", "enable_idempotence": True}

    driver.Producer._settings_extra = _settings_extra  # type: ignore[method-assign]
    _applied = True
