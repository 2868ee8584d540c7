"""An alert fires, escalates and resolves, end to end: a provider fails under steady traffic, the
analytics process raises the alert, and every transition shows up, in order, on the alerts topic,
in the ClickHouse ``alerts`` table (read through the analytics process's query endpoint) and at
a webhook receiver started here. The analytics process is restarted while the alerts are critical;
the new one resumes from the table, so nothing fires twice. Then the provider heals and the alerts
resolve in all three places. A tenant with a small monthly budget gets its budget alert, each level once.

Alert timings are shortened through the environment (evaluation every second, warning after 2 s,
critical 3 s later, a 10 s window), so the whole scenario takes well under a minute of traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from schemas.alert import Alert
from schemas.base import utc_now
from streams.analytics.client import resolve_data_path
from streams.analytics.endpoint import EndpointReader, read_advertisement
from streams.analytics.reports import alert_history
from streams.client import AifleetClient, ClientTimeout
from streams.settings import BENCH_CONFIG_FILE, Settings
from tests.fixtures.pipeline import patched_env, pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PROVIDER = "openai"
# A failing provider opens its circuit (provider_unhealthy) and its calls fail (provider_error_rate).
WATCHED = (f"provider_unhealthy:{PROVIDER}", f"provider_error_rate:{PROVIDER}")
FIRE, ESCALATE, RESOLVE = ("firing", "warning"), ("firing", "critical"), ("resolved", "critical")
LIFECYCLE = [FIRE, ESCALATE, RESOLVE]
ALERT_ENV = {
    "AIFLEET_ANALYTICS__ALERT_EVERY_S": "1",
    "AIFLEET_ANALYTICS__ALERT_WINDOW_S": "10",
    "AIFLEET_ANALYTICS__ALERT_WARN_AFTER_S": "2",
    "AIFLEET_ANALYTICS__ALERT_CRITICAL_AFTER_S": "3",
    "AIFLEET_ANALYTICS__ALERT_COOLDOWN_S": "60",
    "AIFLEET_ANALYTICS__ALERT_MIN_REQUESTS": "5",
    "AIFLEET_ANALYTICS__BATCH_WITHIN_S": "0.2",
    # one half-open probe per 5 s: an open circuit leaves fewer calls in the window than min_requests,
    # as in production (a probe a minute, a 5-minute window, 20 requests to judge a rate)
    "AIFLEET_RESILIENCE__BREAKER_RECOVERY_S": "5",
    "AIFLEET_RESILIENCE__RETRY_BASE_DELAY_S": "0.05",
    "AIFLEET_ANALYTICS__ALERT_BUDGET_EVERY_S": "1",
}
THRIFTY = "thrifty"  # a tenant whose budget the test spends past 80 %
BUDGET = f"tenant_budget:{THRIFTY}"
# The gate admits on estimates, and answers may cost a little more, so spend can pass 100 % before the first
# evaluation sees 80 %: the alert may start critical, or escalate later, but each level arrives once.
BUDGET_SEQUENCES = ([FIRE], [ESCALATE], [FIRE, ESCALATE])
BUDGET_USD = 0.0005  # ~20 answers of ~24 tokens; the gate admits a request only if its estimate still fits
THRIFTY_CATALOG = f"""

[tenants.{THRIFTY}]
tier = "enterprise"
monthly_budget_usd = {BUDGET_USD}
"""
RATE_PER_S = 10.0
OUTAGE_HOLD_S = 15.0  # the provider stays down this long after the escalation: longer than the window
PHASE_TIMEOUT_S = 60.0
_TITLE = re.compile(r"\[(WARNING|CRITICAL)\] (\S+) (firing|resolved): (\S+)")


@dataclass(frozen=True)
class Seen:
    """One alert transition as one of the three places showed it."""

    alert_id: str
    status: str
    severity: str
    at: float  # time.monotonic() when the test saw it

    @property
    def transition(self) -> tuple[str, str]:
        return (self.status, self.severity)


@dataclass
class Observed:
    topic: list[Seen] = field(default_factory=list)
    webhook: list[Seen] = field(default_factory=list)
    table: list[Seen] = field(default_factory=list)

    def places(self) -> dict[str, list[Seen]]:
        return {"topic": self.topic, "table": self.table, "webhook": self.webhook}

    def has(self, alert_id: str, transition: tuple[str, str]) -> bool:
        return all(
            any(s.alert_id == alert_id and s.transition == transition for s in seen) for seen in self.places().values()
        )


def _sequence(seen: list[Seen], alert_id: str) -> list[tuple[str, str]]:
    return [s.transition for s in seen if s.alert_id == alert_id]


def _first(seen: list[Seen], alert_id: str, transition: tuple[str, str]) -> float:
    return min(s.at for s in seen if s.alert_id == alert_id and s.transition == transition)


@contextlib.asynccontextmanager
async def webhook_receiver(observed: Observed) -> AsyncIterator[str]:
    """A Slack-compatible receiver on 127.0.0.1 that records every alert posted to it."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        match = _TITLE.search(str(body.get("text", "")))
        fields = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
        assert match is not None, body
        observed.webhook.append(Seen(fields["alert_id"], match.group(3), match.group(1).lower(), time.monotonic()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def _read_topic(bootstrap: str, topic: str, observed: Observed) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for r in records:
                    a = Alert.from_json(r.value)
                    observed.topic.append(Seen(a.alert_id, a.status, a.severity, time.monotonic()))
    finally:
        await consumer.stop()


def _read_table(settings: Settings, since: Any, already: int) -> list[dict[str, Any]]:
    """New rows of the alerts table, read through the analytics process's query endpoint only (never
    by opening the chDB path here: that would take the store from the analytics process)."""
    advert = read_advertisement(resolve_data_path(settings.clickhouse, settings.home))
    if advert is None:
        return []
    reader = EndpointReader(advert.url, advert.token, timeout_s=10.0)
    try:
        return alert_history(reader, since, database=settings.clickhouse.database)[already:]
    finally:
        reader.close()


async def _poll_table(settings: Settings, since: Any, observed: Observed) -> None:
    while True:
        try:
            rows = await asyncio.to_thread(_read_table, settings, since, len(observed.table))
        except Exception:  # noqa: BLE001 - the endpoint may be starting
            rows = []
        now = time.monotonic()
        observed.table.extend(Seen(str(r["alert_id"]), str(r["status"]), str(r["severity"]), now) for r in rows)
        await asyncio.sleep(0.5)


@dataclass
class Traffic:
    ok: int = 0
    errors: int = 0
    timeouts: int = 0


async def _drive(client: AifleetClient, traffic: Traffic, run: str) -> None:
    """Steady traffic at RATE_PER_S, each request with a fresh prompt (no cache hits)."""
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            response = await client.ask(f"alert drill {run} question {i}", tenant="bench", timeout=15.0)
        except ClientTimeout:
            traffic.timeouts += 1
            return
        if response.status == "ok":
            traffic.ok += 1
        else:
            traffic.errors += 1

    i = 0
    try:
        while True:
            task = asyncio.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
            await asyncio.sleep(1.0 / RATE_PER_S)
    finally:
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _until(condition: Callable[[], bool], timeout_s: float, what: str, observed: Observed) -> float:
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not seen within {timeout_s:.0f}s: {what}; observed {observed}")
        await asyncio.sleep(0.2)
    return time.monotonic()


def _profile(emulator: str, provider: str, **profile: object) -> None:
    httpx.post(f"{emulator}/_emulator/profile/{provider}", json=profile, timeout=5).raise_for_status()


async def _spend_budget(client: AifleetClient, run: str, observed: Observed) -> int:
    """Ask as the thrifty tenant until its budget alert shows everywhere; returns the answers it got."""
    answered = 0
    t0 = time.monotonic()
    i = 0
    while not (observed.has(BUDGET, FIRE) or observed.has(BUDGET, ESCALATE)):
        if time.monotonic() - t0 > PHASE_TIMEOUT_S:
            raise AssertionError(f"no budget alert after {answered} answers; observed {observed}")
        response = await client.ask(f"budget drill {run} question {i}", tenant=THRIFTY, max_tokens=16, timeout=15.0)
        answered += response.status == "ok"
        i += 1
        if response.status != "ok":
            await asyncio.sleep(0.2)  # past the budget: wait for the alert
    return answered


async def test_failing_provider_alert_fires_escalates_and_resolves_everywhere(
    kafka_bootstrap: str, aifleet_home: Path, tmp_path: Path
) -> None:
    observed = Observed()
    run = uuid.uuid4().hex[:6]
    test_started = utc_now() - timedelta(seconds=1)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(BENCH_CONFIG_FILE.read_text() + THRIFTY_CATALOG)
    async with webhook_receiver(observed) as hook_url:
        env = pipeline_env(
            kafka_bootstrap,
            aifleet_home,
            **ALERT_ENV,
            AIFLEET_ANALYTICS__WEBHOOK_URL=hook_url,
            AIFLEET_CONFIG_FILE=str(catalog),
        )
        prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
        with patched_env(env):
            settings = Settings()
        with running_stack(env, workers=1) as stack:
            assert stack.emulator_url
            traffic = Traffic()
            watchers = [
                asyncio.create_task(_read_topic(kafka_bootstrap, f"{prefix}.alerts", observed)),
                asyncio.create_task(_poll_table(settings, test_started, observed)),
            ]
            async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
                thrifty_answers = await _spend_budget(client, run, observed)
                driver = asyncio.create_task(_drive(client, traffic, run))
                try:
                    await asyncio.sleep(6.0)  # healthy traffic fills the window: nothing may fire
                    assert traffic.ok > 0, traffic
                    healthy_ok = traffic.ok
                    provider_alerts = [s for seen in observed.places().values() for s in seen if s.alert_id in WATCHED]
                    assert not provider_alerts, observed

                    fault_at = time.monotonic()
                    _profile(stack.emulator_url, PROVIDER, error_rates={"500": 1.0})
                    for alert_id in WATCHED:
                        await _until(
                            lambda a=alert_id: observed.has(a, ESCALATE),  # type: ignore[misc]
                            PHASE_TIMEOUT_S,
                            f"{alert_id} critical in the topic, the table and the webhook",
                            observed,
                        )
                    restart_at = time.monotonic()
                    [analytics] = [c for c in stack.children if c.name == "analytics"]
                    stack.terminate(analytics)  # the new process must resume these alerts, not fire them again
                    stack.add_analytics()
                    await asyncio.sleep(max(0.0, OUTAGE_HOLD_S - (time.monotonic() - restart_at)))
                    failing_errors = traffic.errors
                    early = [s for seen in observed.places().values() for s in seen if s.status == "resolved"]
                    assert not early, f"resolved while the provider was still failing: {early}"

                    heal_at = time.monotonic()
                    _profile(stack.emulator_url, PROVIDER)  # the default profile: healthy again
                    for alert_id in WATCHED:
                        await _until(
                            lambda a=alert_id: observed.has(a, RESOLVE),  # type: ignore[misc]
                            PHASE_TIMEOUT_S,
                            f"{alert_id} resolved in the topic, the table and the webhook",
                            observed,
                        )
                    await asyncio.sleep(1.5)  # anything emitted after the resolution would show up now
                finally:
                    driver.cancel()
                    await asyncio.gather(driver, return_exceptions=True)
                    for w in watchers:
                        w.cancel()
                    await asyncio.gather(*watchers, return_exceptions=True)

    print(
        f"\ntraffic: {traffic.ok} ok ({healthy_ok} before the fault), {traffic.errors} errors "
        f"({failing_errors} by the end of the outage), {traffic.timeouts} timeouts; "
        f"{thrifty_answers} answers to {THRIFTY} before its budget alert; analytics restarted "
        f"{restart_at - fault_at:.1f} s after the fault"
    )
    for alert_id in WATCHED:
        for place, seen in observed.places().items():
            sequence = _sequence(seen, alert_id)
            fire = _first(seen, alert_id, FIRE) - fault_at
            escalate = _first(seen, alert_id, ESCALATE) - fault_at
            resolve = _first(seen, alert_id, RESOLVE) - heal_at
            print(
                f"{alert_id:32} {place:8} fired {fire:5.1f} s after the fault, critical at {escalate:5.1f} s, "
                f"resolved {resolve:5.1f} s after recovery; sequence {sequence}"
            )
    print(f"{BUDGET:32} sequence everywhere {_sequence(observed.topic, BUDGET)}")
    for alert_id in WATCHED:
        for place, seen in observed.places().items():
            assert _sequence(seen, alert_id) == LIFECYCLE, (alert_id, place, seen)
    for place, seen in observed.places().items():
        assert _sequence(seen, BUDGET) in BUDGET_SEQUENCES, (place, seen)  # each level once, restart or not
    assert len({tuple(_sequence(seen, BUDGET)) for seen in observed.places().values()}) == 1, observed
    others = {s.alert_id for seen in observed.places().values() for s in seen} - {*WATCHED, BUDGET}
    assert not others, f"unexpected alerts: {others}"
