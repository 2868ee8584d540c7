"""End to end through the real broker: requests in, exactly one response each out; bad records to the DLQ."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.dead_letter import DeadLetter
from schemas.request import Message, Request
from schemas.usage import UsageEvent
from streams.analytics.client import resolve_data_path
from streams.analytics.endpoint import EndpointReader, read_advertisement
from streams.bench import emulator_stats, run_load
from streams.client import AifleetClient
from streams.settings import Settings
from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 60.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < expect and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                out.extend(r.value for r in records if r.value is not None)
        await asyncio.sleep(1.0)  # anything beyond ``expect`` would be a duplicate
        for records in (await consumer.getmany(timeout_ms=500)).values():
            out.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return out


async def test_500_requests_each_answered_exactly_once(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home)
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    with running_stack(env, workers=1) as stack:
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            result, responses = await run_load(client, requests=500, concurrency=50, timeout_s=90, settle_s=2.0)
        calls = emulator_stats(stack.emulator_url)
    assert result.sent == 500
    assert result.ok == 500, result.error_reasons
    assert result.lost == 0
    assert result.duplicates == 0
    assert len({r.request_id for r in responses}) == 500
    assert all(r.output and r.output.startswith("Echo:") for r in responses)
    assert all(r.usage.input_tokens > 0 and r.usage.output_tokens > 0 and r.cost_usd > 0 for r in responses)
    assert calls is not None and calls["total_calls"] == 500
    # and exactly one response per request on the topic itself, not just as the client saw it
    raw = await _read_topic(kafka_bootstrap, f"{prefix}.responses", expect=501)
    ids = [rid for v in raw if (rid := orjson.loads(v)["request_id"]).startswith("bench-")]  # not the warm-up
    assert sorted(ids) == sorted(r.request_id for r in responses)


MALFORMED: list[tuple[bytes, str]] = [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"[1, 2, 3]", "schema_violation"),
    (orjson.dumps({"request_id": "bad-1", "tenant": "acme", "kind": "chat"}), "schema_violation"),
    (
        orjson.dumps(
            {"request_id": "bad-2", "tenant": "Not A Tenant!", "messages": [{"role": "user", "content": "x"}]}
        ),
        "schema_violation",
    ),
    (
        orjson.dumps(
            {
                "request_id": "bad-3",
                "tenant": "acme",
                "schema_version": 9,
                "messages": [{"role": "user", "content": "x"}],
            }
        ),
        "unsupported_schema_version",
    ),
    (
        orjson.dumps(
            {"request_id": "bad-4", "tenant": "acme", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
        ),
        "payload_too_large",
    ),
    (
        orjson.dumps(
            {
                "request_id": "bad-5",
                "tenant": "acme",
                "reply_topic": "someone-else.responses",
                "messages": [{"role": "user", "content": "x"}],
            }
        ),
        "forbidden_reply_topic",
    ),
    (b"\xff\xfe\x00garbage", "invalid_json"),
]


async def test_malformed_records_go_to_dlq_while_valid_neighbours_are_answered(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_KAFKA__PARTITIONS="1")
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]
    with running_stack(env, workers=1):
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix, partitions=1) as client:
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4 * 1024 * 1024)
            await producer.start()
            valid: list[Request] = []
            futures = []
            try:
                # valid, bad, valid, bad, ... on a single partition: each bad record sits between good ones
                for i, (payload, _) in enumerate(MALFORMED):
                    req = Request(
                        request_id=f"ok-{run}-{i}",
                        tenant="acme",
                        messages=[Message(role="user", content=f"question {i}")],
                    )
                    valid.append(req)
                    futures.append(await client.submit(req))
                    await producer.send_and_wait(f"{prefix}.requests", payload, key=b"acme")
                tail = Request(
                    request_id=f"ok-{run}-tail", tenant="acme", messages=[Message(role="user", content="last")]
                )
                futures.append(await client.submit(tail))
            finally:
                await producer.stop()
            answers = await asyncio.wait_for(asyncio.gather(*futures), 90)
            assert [a.status for a in answers] == ["ok"] * len(answers)
            # the bad records whose request id was readable were answered with a typed error
            errors = {}
            for rid in ("bad-1", "bad-2", "bad-3", "bad-4"):
                fut = await client.submit(
                    Request(request_id=rid, tenant="acme", messages=[Message(role="user", content="probe")])
                )
                errors[rid] = fut
        letters = [
            DeadLetter.from_json(v) for v in await _read_topic(kafka_bootstrap, f"{prefix}.dlq", expect=len(MALFORMED))
        ]
    assert len(letters) == len(MALFORMED)
    assert [dl.reason.value for dl in sorted(letters, key=lambda d: d.offset)] == [r for _, r in MALFORMED]
    for dl, (payload, _) in zip(sorted(letters, key=lambda d: d.offset), MALFORMED, strict=True):
        assert dl.payload_size == len(payload)
        assert base64.b64decode(dl.payload_b64) == payload[: len(base64.b64decode(dl.payload_b64))]
        assert dl.detail
    assert {dl.request_id for dl in letters if dl.request_id} == {"bad-1", "bad-2", "bad-3", "bad-4", "bad-5"}


async def test_error_responses_for_readable_ids(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home)
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    with running_stack(env, workers=1):
        async with AifleetClient(kafka_bootstrap, topic_prefix=prefix) as client:
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
            await producer.start()
            try:
                waiting = {}
                for rid, doc in {
                    "e-missing-messages": {"request_id": "e-missing-messages", "tenant": "acme"},
                    "e-version": {
                        "request_id": "e-version",
                        "tenant": "acme",
                        "schema_version": 2,
                        "messages": [{"role": "user", "content": "x"}],
                    },
                }.items():
                    fut = asyncio.get_running_loop().create_future()
                    client._waiting[rid] = fut  # register interest without producing through the client
                    waiting[rid] = fut
                    await producer.send_and_wait(f"{prefix}.requests", orjson.dumps(doc), key=b"acme")
            finally:
                await producer.stop()
            got = {rid: await asyncio.wait_for(f, 60) for rid, f in waiting.items()}
    assert got["e-missing-messages"].status == "error"
    assert got["e-missing-messages"].error is not None
    assert got["e-missing-messages"].error.reason.value == "schema_violation"
    assert "message" in got["e-missing-messages"].error.message
    assert got["e-version"].error is not None
    assert got["e-version"].error.reason.value == "unsupported_schema_version"


def _count_stored(settings: Settings, pattern: str, expect: int, timeout_s: float = 30.0) -> int:
    """Usage rows whose event id matches ``pattern``, read through the analytics process's query endpoint
    (never by opening the chDB path here), polled until ``expect`` are there or the time is up."""
    sql = f"SELECT count() FROM {settings.clickhouse.database}.usage_events WHERE event_id LIKE {{p:String}}"
    deadline = time.monotonic() + timeout_s
    count = -1
    while time.monotonic() < deadline:
        advert = read_advertisement(resolve_data_path(settings.clickhouse, settings.home))
        if advert is not None:
            reader = EndpointReader(advert.url, advert.token, timeout_s=10.0)
            try:
                count = int(reader.query_rows(sql, {"p": pattern})[1][0][0])
            finally:
                reader.close()
            if count >= expect:
                break
        time.sleep(0.3)
    return count


async def test_malformed_usage_records_are_dead_lettered_by_the_sink_and_good_ones_stored(
    kafka_bootstrap: str, aifleet_home: Path
) -> None:
    """The usage sink is an edge too: records on the usage topic that are not UsageEvents go to the DLQ
    with their reason (before the batch is acked), and the good ones around them are stored."""
    env = pipeline_env(kafka_bootstrap, aifleet_home, AIFLEET_ANALYTICS__BATCH_WITHIN_S="0.2")
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    run = uuid.uuid4().hex[:6]
    good = [
        UsageEvent(
            event_id=f"{run}-{i}:1",
            request_id=f"{run}-{i}",
            tenant="acme",
            provider="openai",
            model="gpt-4o-mini",
            status="ok",
            cost_usd=0.01,
        )
        for i in range(2)
    ]
    bad = [
        (b"not json at all", "invalid_json"),
        (orjson.dumps({"event_id": f"{run}-x:1", "request_id": f"{run}-x", "tenant": "acme"}), "schema_violation"),
        (b"[1, 2, 3]", "schema_violation"),
    ]
    with running_stack(env, workers=1) as stack:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for payload in (good[0].to_json(), *(p for p, _ in bad), good[1].to_json()):
                await producer.send_and_wait(f"{prefix}.usage", payload, key=b"acme", partition=0)
        finally:
            await producer.stop()
        raw = await _read_topic(kafka_bootstrap, f"{prefix}.dlq", expect=len(bad))
        letters = sorted((DeadLetter.from_json(v) for v in raw), key=lambda d: d.offset)
        stored = await asyncio.to_thread(_count_stored, stack.settings, f"{run}-%", len(good))
    assert [(d.source_topic, d.reason.value) for d in letters] == [(f"{prefix}.usage", r) for _, r in bad]
    assert [base64.b64decode(d.payload_b64) for d in letters] == [p for p, _ in bad]
    assert "not a UsageEvent" in letters[1].detail and letters[1].request_id == f"{run}-x"
    assert stored == len(good)  # the good neighbours are stored, the bad record is not
