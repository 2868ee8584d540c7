"""Sending a purge: one record to every partition of the cache topic, so each owner drops its share."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from schemas.cache import CachePurge
from streams.errors import BrokerError


def send_purge(
    bootstrap: str,
    cache_topic: str,
    scope: str,
    *,
    timeout_s: float = 15.0,
    client_config: Mapping[str, str] | None = None,
) -> tuple[str, int]:
    """Purge ``scope`` ('*': everything) on every partition; returns (purge id, partitions reached).

    ``client_config``: librdkafka settings for a secured cluster (``streams.kafka_auth.librdkafka_config``).
    """
    conf: dict[str, str | int | float | bool] = {**(client_config or {}), "bootstrap.servers": bootstrap}
    meta = AdminClient(conf).list_topics(cache_topic, timeout=timeout_s)
    topic = meta.topics.get(cache_topic)
    if topic is None or topic.error is not None or not topic.partitions:
        raise BrokerError(f"cache topic {cache_topic!r} not found on {bootstrap}: is a worker running?")
    purge = CachePurge(scope=scope, purge_id=f"purge-{uuid.uuid4().hex[:12]}")
    value = purge.to_json()
    producer = Producer({**conf, "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for partition in topic.partitions:
        producer.produce(cache_topic, value=value, key=scope.encode(), partition=partition, on_delivery=delivered)
    if producer.flush(timeout_s) or failures:
        raise BrokerError(f"purge not delivered to every partition: {failures or 'flush timed out'}")
    return purge.purge_id, len(topic.partitions)
