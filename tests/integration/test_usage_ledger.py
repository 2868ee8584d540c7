"""Usage lands in ClickHouse (chDB) exactly: the report's total equals what clients were charged,
after a worker crash, and replaying the usage topic from the start leaves it unchanged."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.analytics.client import open_reader
from streams.analytics.reports import report
from streams.bench import run_load
from streams.client import AifleetClient
from streams.settings import Settings
from tests.fixtures.pipeline import FAST_FAILOVER, patched_env, pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _report_total(settings: Settings) -> tuple[Decimal, int]:
    reader = open_reader(settings.clickhouse, home=settings.home)
    try:
        rep = report(reader, "cost", since="1d", by="tenant", tenants=("bench",))  # not the stack's warm-up
        return Decimal(str(rep.total("cost_usd"))), int(rep.total("requests"))
    finally:
        reader.close()


async def _wait_for_total(settings: Settings, expected: Decimal, rows: int, timeout_s: float = 90.0) -> Decimal:
    deadline = time.monotonic() + timeout_s
    total = Decimal(0)
    while time.monotonic() < deadline:
        try:
            total, count = _report_total(settings)
            if count >= rows and round(total, 2) == round(expected, 2):
                return total
        except Exception:  # noqa: BLE001 - the store may still be starting
            pass
        await asyncio.sleep(1.0)
    return total


def _group_lag(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def _rewind_group(bootstrap: str, group: str, topic: str, partitions: int) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(partitions)], asynchronous=False)
    consumer.close()


async def test_cost_report_equals_client_charges_after_crash_and_replay(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    env = pipeline_env(
        kafka_bootstrap,
        aifleet_home,
        **FAST_FAILOVER,
    )
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    total_requests = 400
    with patched_env(env):
        settings = Settings()
    with running_stack(env, workers=2, latency_ms=10) as stack:
        victim = stack.worker_children()[0]
        done = 0

        def progress() -> None:
            nonlocal done
            done += 1
            if done == total_requests // 3:
                victim.proc.send_signal(signal.SIGKILL)  # the survivor takes its partitions over

        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            result, responses = await run_load(
                client, requests=total_requests, concurrency=40, timeout_s=120, on_done=progress, settle_s=1.0
            )
        assert result.lost == 0, result
        assert result.ok == total_requests, result.error_reasons
        charged = sum((Decimal(str(r.cost_usd)) for r in responses), Decimal(0))
        assert charged > 0
        total = await _wait_for_total(settings, charged, total_requests)
        print(f"\nclients were charged ${charged:.6f}; ClickHouse cost report ${total:.6f}")
        assert round(total, 2) == round(charged, 2)
        assert abs(total - charged) < Decimal("0.000001") * total_requests

        # replay the whole usage topic into the store: the totals must not move
        analytics = next(c for c in stack.children if c.name == "analytics")
        stack.terminate(analytics)
        _rewind_group(kafka_bootstrap, settings.usage_sink_group, f"{prefix}.usage", 4)
        assert _group_lag(kafka_bootstrap, settings.usage_sink_group, f"{prefix}.usage", 4) >= total_requests
        stack.add_analytics()
        deadline = time.monotonic() + 90
        while _group_lag(kafka_bootstrap, settings.usage_sink_group, f"{prefix}.usage", 4) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(1.0)  # the new sink re-reads and re-inserts every usage event from offset 0
        assert _group_lag(kafka_bootstrap, settings.usage_sink_group, f"{prefix}.usage", 4) == 0
        replayed, count = _report_total(settings)
        print(f"after replaying the usage topic from the start: ${replayed:.6f} over {count} rows")
        assert replayed == total
