"""Cluster administration aifleet needs: topics exist, with the configured partitions, before anyone reads;
consumer groups settled before traffic is measured."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from confluent_kafka.admin import AdminClient, NewTopic

from streams.errors import AifleetError


def ensure_topics(
    bootstrap: str,
    names: list[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    config: dict[str, str] | None = None,
    client_config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created. Existing ones are left as they are.

    ``client_config``: librdkafka settings for a secured cluster (``streams.kafka_auth.librdkafka_config``).
    """
    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [n for n in dict.fromkeys(names) if n not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(n, num_partitions=partitions, replication_factor=replication_factor, config=config or {})
            for n in missing
        ],
        operation_timeout=timeout_s,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise AifleetError(f"could not create topic {name}: {exc}") from exc
    return missing


def wait_for_group(
    bootstrap: str,
    group: str,
    members: int,
    *,
    timeout_s: float = 90.0,
    stable_for_s: float = 0.0,
    poll_s: float = 0.25,
    check: Callable[[], None] | None = None,
    client_config: Mapping[str, str] | None = None,
) -> float | None:
    """Wait until ``group`` is stable with ``members`` members (for ``stable_for_s`` in a row, so not just in
    between two rebalances); seconds waited, or None when it never was. ``check`` runs on every poll (it may
    raise, say when a member died). A failed describe (the group may not exist yet) counts as not stable."""
    from confluent_kafka import ConsumerGroupState

    admin = AdminClient({**(client_config or {}), "bootstrap.servers": bootstrap})
    started = time.monotonic()
    stable_since: float | None = None
    while time.monotonic() - started < timeout_s:
        if check is not None:
            check()
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
            ready = desc.state == ConsumerGroupState.STABLE and len(desc.members) == members
        except Exception:  # noqa: BLE001 - not there yet, or mid-rebalance
            ready = False
        now = time.monotonic()
        if not ready:
            stable_since = None
        elif stable_since is None:
            stable_since = now
        if stable_since is not None and now - stable_since >= stable_for_s:
            return round(now - started, 3)
        time.sleep(poll_s)
    return None
