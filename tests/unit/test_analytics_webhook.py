"""The Slack-compatible webhook sender against a real local aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from aiohttp import web

from schemas.alert import Alert
from streams.analytics.errors import WebhookDeliveryFailed
from streams.analytics.webhook import SlackWebhook, slack_payload

ALERT = Alert(
    alert_id="provider_p95_latency:openai",
    rule="provider_p95_latency",
    subject="openai",
    severity="critical",
    status="firing",
    value=4200.0,
    threshold=3000.0,
    message="openai: p95 latency 4.20 s (> 3.00 s)",
    started_at=datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
    ts=datetime(2025, 6, 1, 12, 7, tzinfo=UTC),
)


class Receiver:
    """Answers with a scripted list of statuses, then 200; records every body."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, text="ok" if status == 200 else "nope", headers=headers)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield rec, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


def recorder() -> tuple[list[float], Callable]:
    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    return delays, sleep


async def test_delivers_slack_payload(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    async with SlackWebhook(url) as hook:
        assert await hook.send(ALERT) == 1
    [body] = rec.bodies
    assert body == slack_payload(ALERT)
    assert "CRITICAL" in body["text"] and ALERT.message in body["text"]
    assert body["attachments"][0]["color"] == "#d0021b"


async def test_retries_5xx_and_429_with_backoff(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.script = [(500, {}), (503, {}), (429, {"Retry-After": "7"})]
    delays, sleep = recorder()
    async with SlackWebhook(url, retries=4, backoff_s=0.5, sleep=sleep) as hook:
        assert await hook.send(ALERT) == 4
    assert len(rec.bodies) == 4
    assert delays == [0.5, 1.0, 7.0]  # exponential, then the receiver's Retry-After


async def test_gives_up_after_retries(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.script = [(502, {})] * 10
    delays, sleep = recorder()
    async with SlackWebhook(url, retries=2, backoff_s=0.1, sleep=sleep) as hook:
        with pytest.raises(WebhookDeliveryFailed, match="after 3 attempts: HTTP 502"):
            await hook.send(ALERT)
    assert len(rec.bodies) == 3 and delays == [0.1, 0.2]


async def test_client_errors_are_not_retried(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.script = [(404, {})]
    delays, sleep = recorder()
    async with SlackWebhook(url, sleep=sleep) as hook:
        with pytest.raises(WebhookDeliveryFailed, match="rejected"):
            await hook.send(ALERT)
    assert len(rec.bodies) == 1 and delays == []


async def test_connection_refused_is_retried_then_fails() -> None:
    delays, sleep = recorder()
    async with SlackWebhook("http://127.0.0.1:1/hook", retries=2, backoff_s=0.01, sleep=sleep) as hook:
        with pytest.raises(WebhookDeliveryFailed, match="ClientConnectorError"):
            await hook.send(ALERT)
    assert delays == [0.01, 0.02]


@pytest.mark.parametrize("header", ["nan", "NaN", "inf", "-inf", "-3", "soon"])
async def test_a_retry_after_that_is_not_a_finite_delay_falls_back_to_the_backoff(
    receiver: tuple[Receiver, str], header: str
) -> None:
    rec, url = receiver
    rec.script = [(429, {"Retry-After": header}), (429, {"Retry-After": header})]
    delays, sleep = recorder()
    async with SlackWebhook(url, retries=4, backoff_s=0.5, sleep=sleep) as hook:
        assert await hook.send(ALERT) == 3
    assert delays == [0.5, 1.0]  # the exponential backoff, not NaN (which slept for ever) or 0
