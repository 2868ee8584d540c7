"""Dispatch billing: a request that ends without any call still settles its reservation; prompts ride only
when enabled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from schemas.request import Message, Request
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent
from streams.agents.dispatch import DispatchStage
from streams.catalog import TenantSpec, load_catalog
from streams.resilience.caller import Attempt, CallResult
from streams.resilience.errors import RateLimitSaturated
from streams.routing.policy import CostAwareRouter
from streams.routing.quota import QuotaLedger
from streams.settings import DEFAULT_CONFIG_FILE
from streams.topics import Topics

TOPICS = Topics("t")


class SaturatedCaller:
    """What the resilient caller returns when every provider's limiter refuses: attempts, none called."""

    async def complete(self, request: Request, chain: list[tuple[str, str]], deadline: Any) -> CallResult[Any]:
        attempts = [Attempt(p, m, "rate_limited", error=RateLimitSaturated("full", provider=p)) for p, m in chain]
        return CallResult(None, RateLimitSaturated("every provider's rate limit is saturated"), attempts)


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def publish(self, topic: str, value: Any, key: Any = None, partition: int | None = None) -> Any:
        self.sent.append((topic, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_a_request_refused_before_any_call_releases_its_reservation() -> None:
    base = load_catalog(DEFAULT_CONFIG_FILE)
    catalog = base.model_copy(update={"tenants": {"acme": TenantSpec(tier="pro", monthly_budget_usd=0.01)}})
    router = CostAwareRouter(catalog)
    ledger = QuotaLedger(catalog)
    publisher = RecordingPublisher()
    stage = DispatchStage(
        topics=TOPICS,
        router=router,
        caller=SaturatedCaller(),
        publisher=publisher,
        worker_id="w",  # type: ignore[arg-type]
    )
    now = datetime.now(UTC)

    async def run() -> list[UsageEvent]:
        events: list[UsageEvent] = []
        for i in range(20):  # each reserves ~$0.0007 of a $0.01 budget: without releases the 15th is refused
            request = Request(
                request_id=f"r{i}", tenant="acme", messages=[Message(role="user", content="x" * 2000)], max_tokens=1000
            )
            plan = router.plan(request, tier="pro")
            ledger.admit("acme", "pro", now, plan.estimated_cost_usd, request_id=request.request_id)
            await stage.handle(RoutedRequest(request=request, route=plan.route, tier="pro", reply_topic="t.responses"))
            usage = [e for topic, e in publisher.sent if topic == TOPICS.usage]
            for event in usage:
                ledger.settle_usage(event)
            events += usage
            publisher.sent.clear()
        return events

    events = asyncio.run(run())
    assert len(events) == 20
    assert all(
        e.status == "rejected" and e.attempt == 0 and e.cost_usd == 0 and e.event_id.endswith(":0") for e in events
    )
    assert events[0].error_reason is not None and events[0].error_reason.value == "rate_limited"
    standing = ledger.usage("acme", now)
    assert (standing.spent_usd, standing.outstanding_usd, standing.requests_today) == (0, 0, 20)


class AnsweringCaller:
    """Fails the first provider, then answers: two calls, two usage events."""

    async def complete(self, request: Request, chain: list[tuple[str, str]], deadline: Any) -> CallResult[Any]:
        from schemas.response import TokenUsage
        from streams.errors import ProviderUnavailable
        from streams.providers.base import Completion

        (p1, m1), (p2, m2) = chain[0], chain[1]
        attempts = [
            Attempt(p1, m1, "error", 0.1, error=ProviderUnavailable("down", provider=p1)),
            Attempt(p2, m2, "ok", 0.2, usage=TokenUsage(input_tokens=5, output_tokens=2)),
        ]
        return CallResult(
            Completion(text="hi", model=m2, usage=TokenUsage(input_tokens=5, output_tokens=2)), None, attempts
        )


def test_the_prompt_rides_on_the_first_attempts_usage_event_only_when_enabled() -> None:
    catalog = load_catalog(DEFAULT_CONFIG_FILE)
    router = CostAwareRouter(catalog)
    request = Request(request_id="p1", tenant="acme", messages=[Message(role="user", content="what is kafka?")])
    plan = router.plan(request, tier="pro")
    assert plan.route.fallback, "the test needs a fallback to make two attempts"

    def usage_of(store_prompts: bool) -> list[UsageEvent]:
        publisher = RecordingPublisher()
        stage = DispatchStage(
            topics=TOPICS,
            router=router,
            caller=AnsweringCaller(),  # type: ignore[arg-type]
            publisher=publisher,  # type: ignore[arg-type]
            worker_id="w",
            store_prompts=store_prompts,
        )
        asyncio.run(stage.handle(RoutedRequest(request=request, route=plan.route, tier="pro", reply_topic="t.r")))
        return [e for topic, e in publisher.sent if topic == TOPICS.usage]

    assert [e.prompt for e in usage_of(False)] == [None, None]
    assert [e.prompt for e in usage_of(True)] == ["user: what is kafka?", None]
