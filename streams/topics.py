"""Topic names of one deployment. A prefix lets several deployments share one cluster."""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic aifleet reads or writes, under one prefix."""

    prefix: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Topics:
        return cls(settings.kafka.topic_prefix)

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def routed(self) -> str:
        return f"{self.prefix}.routed"

    @property
    def responses(self) -> str:
        return f"{self.prefix}.responses"

    @property
    def chunks(self) -> str:
        return f"{self.prefix}.chunks"

    @property
    def usage(self) -> str:
        return f"{self.prefix}.usage"

    @property
    def health(self) -> str:
        return f"{self.prefix}.health"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def infer(self) -> str:
        return f"{self.prefix}.infer"

    @property
    def cache(self) -> str:
        """Cache fills and purges, on the partition that owns the entry (co-partitioned with requests)."""
        return f"{self.prefix}.cache"

    def all(self) -> list[str]:
        """The topics a worker declares at start-up."""
        return [
            self.requests,
            self.routed,
            self.responses,
            self.chunks,
            self.usage,
            self.health,
            self.alerts,
            self.dlq,
            self.infer,
            self.cache,
        ]

    def reply_allowed(self, tenant: str, reply_topic: str) -> bool:
        """A reply topic must be the shared responses topic or lie in the tenant's own namespace."""
        own = f"{self.responses}.{tenant}"
        return reply_topic in (self.responses, own) or reply_topic.startswith(own + ".")

    def chunks_for(self, reply_topic: str) -> str:
        """Streamed chunks go beside the reply topic: responses -> chunks, responses.T -> chunks.T."""
        return self.chunks + reply_topic.removeprefix(self.responses)
