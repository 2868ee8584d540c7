"""The internal event between gate and dispatch: a valid request with its routing decision."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.base import Event, utc_now
from schemas.cache import CacheTicket
from schemas.request import Request, Tier
from schemas.response import RouteInfo


class RoutedRequest(Event):
    """A request that passed the gate, the provider chosen for it, and what is left to fall back on."""

    request: Request
    route: RouteInfo
    tier: Tier
    excluded: list[str] = Field(default_factory=list, description="Providers that already failed it.")
    attempt: int = Field(default=1, ge=1)
    reply_topic: str
    gated_at: datetime = Field(default_factory=utc_now)
    cache: CacheTicket | None = Field(default=None, description="Set when this request leads a cache entry.")
