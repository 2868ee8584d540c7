"""A streamed token chunk on ``<prefix>.chunks``; the final Response closes the stream."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.base import Event, utc_now
from schemas.errors import ErrorInfo


class StreamChunk(Event):
    """One piece of a streamed answer. ``seq`` starts at 0 and has no gaps within an attempt."""

    request_id: str
    tenant: str | None = None
    seq: int = Field(ge=0)
    delta: str = ""
    provider: str | None = None
    model: str | None = None
    final: bool = False
    error: ErrorInfo | None = None
    created_at: datetime = Field(default_factory=utc_now)
