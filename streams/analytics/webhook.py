"""Slack-compatible webhook sender for alerts, with bounded retries (aiohttp).

The payload is Slack's incoming-webhook format (``text`` plus one colour-coded attachment), which
Mattermost, Rocket.Chat and most chat tools also accept. Retries: connection errors, timeouts,
5xx and 429 (honouring ``Retry-After``), with exponential backoff; other 4xx fail at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from schemas.alert import Alert
from streams.analytics.errors import WebhookDeliveryFailed

Sleep = Callable[[float], Awaitable[None]]
COLORS = {("firing", "warning"): "#f2c744", ("firing", "critical"): "#d0021b", "resolved": "#2eb67d"}


def slack_payload(alert: Alert) -> dict[str, Any]:
    """The Slack incoming-webhook body for one alert."""
    icon = ":white_check_mark:" if alert.status == "resolved" else ":rotating_light:"
    color = COLORS["resolved"] if alert.status == "resolved" else COLORS[(alert.status, alert.severity)]
    title = f"{icon} [{alert.severity.upper()}] {alert.rule} {alert.status}: {alert.subject}"
    return {
        "text": f"{title}\n{alert.message}",
        "attachments": [
            {
                "color": color,
                "fallback": alert.message,
                "fields": [
                    {"title": "value", "value": f"{alert.value:g}", "short": True},
                    {"title": "threshold", "value": f"{alert.threshold:g}", "short": True},
                    {"title": "since", "value": alert.started_at.isoformat(), "short": True},
                    {"title": "alert_id", "value": alert.alert_id, "short": True},
                ],
                "ts": int(alert.ts.timestamp()),
            }
        ],
    }


class SlackWebhook:
    """Posts alerts to one webhook URL. Use as an async context manager or call ``close()``."""

    def __init__(
        self,
        url: str,
        *,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        sleep: Sleep = asyncio.sleep,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._sleep = sleep
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> SlackWebhook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this sender opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def send(self, alert: Alert) -> int:
        """Deliver one alert; returns the number of attempts. Raises ``WebhookDeliveryFailed``."""
        return await self.post(slack_payload(alert))

    async def post(self, payload: dict[str, Any]) -> int:
        """POST a JSON payload with retries; returns the attempts it took."""
        last = "no attempt made"
        for attempt in range(1, self.retries + 2):
            delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
            try:
                async with self._http().post(self.url, json=payload) as response:
                    if 200 <= response.status < 300:
                        return attempt
                    body = (await response.text())[:200]
                    last = f"HTTP {response.status}: {body}"
                    if response.status == 429:
                        delay = _retry_after(response.headers.get("Retry-After"), delay, self.max_backoff_s)
                    elif response.status < 500:
                        raise WebhookDeliveryFailed(f"webhook rejected the alert: {last}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt <= self.retries:
                await self._sleep(delay)
        raise WebhookDeliveryFailed(f"webhook failed after {self.retries + 1} attempts: {last}")


def _retry_after(header: str | None, default: float, cap: float) -> float:
    """Seconds to wait from a ``Retry-After`` header, capped; ``default`` unless it is a finite number >= 0.

    ``float()`` accepts ``nan`` and ``inf``: a NaN delay made ``asyncio.sleep`` wait for ever, so
    anything not finite (and any negative value) falls back to the backoff.
    """
    if not header:
        return default
    try:
        seconds = float(header)
    except ValueError:
        return default
    if not math.isfinite(seconds) or seconds < 0:
        return default
    return min(seconds, cap)
