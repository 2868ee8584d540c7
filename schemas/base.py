"""The envelope every event shares: frozen, versioned, JSON on the wire."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION: Literal[1] = 1


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC (every timestamp on the wire is)."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event: immutable, strict about unknown fields, carries ``schema_version``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = SCHEMA_VERSION

    def to_json(self) -> bytes:
        """Serialise to compact JSON bytes, dropping fields that are None."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse and validate JSON bytes; raises ``pydantic.ValidationError`` on a bad record."""
        return cls.model_validate_json(data)
