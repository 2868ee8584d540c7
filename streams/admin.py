"""Cluster administration aifleet needs: topics exist, with the configured partitions, before anyone reads."""

from __future__ import annotations

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
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created. Existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
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
