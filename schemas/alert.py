"""Alerts raised by the alerting agents, on ``<prefix>.alerts`` and in ClickHouse."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Event, utc_now

AlertSeverity = Literal["warning", "critical"]


class Alert(Event):
    """One alert state change: firing at a severity, escalated, or resolved."""

    alert_id: str = Field(description="Stable per (rule, subject): dedup key across workers.")
    rule: str
    subject: str = Field(description="What the alert is about: a provider, a tenant.")
    severity: AlertSeverity
    status: Literal["firing", "resolved"]
    value: float
    threshold: float
    message: str
    started_at: datetime
    ts: datetime = Field(default_factory=utc_now)
