"""The gate counts a tenant's quota on the tenant's home partition (murmur2, as its usage events are placed),
whatever partitioner the client's producer used."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from aiokafka.partitioner import murmur2

from streams.agents.gate import GateStage, Record
from streams.topics import Topics
from tests.fixtures.recording import RecordingPublisher

TOPICS = Topics("p")
TENANT = "plain-tenant"  # CRC32 (librdkafka's default) puts it on partition 1 of 4, murmur2 on partition 2
VALUE = orjson.dumps({"request_id": "r1", "tenant": TENANT, "messages": [{"role": "user", "content": "hi"}]})


class Admitting(GateStage):
    """The gate up to admission: records where ``_admit`` would count the request."""

    admitted: list[int]

    async def _admit(self, request: Any, partition: int) -> None:
        self.admitted.append(partition)


def gate(pub: RecordingPublisher, partitions: int | None) -> Admitting:
    none = cast(Any, None)
    stage = Admitting(
        topics=TOPICS,
        router=none,
        ledger=none,
        available=lambda _p: True,
        load=lambda _p: 0.0,
        publisher=pub,
        max_request_bytes=1_048_576,
        dlq_max_payload_bytes=700_000,
        default_tier="free",
        partitions=partitions,
    )
    stage.admitted = []
    return stage


def test_a_record_keyed_by_its_tenant_on_another_partition_is_sent_to_the_tenants_home_once() -> None:
    home = (murmur2(TENANT.encode()) & 0x7FFFFFFF) % 4
    assert home == 2
    pub = RecordingPublisher()
    stage = gate(pub, partitions=4)
    asyncio.run(stage.handle(Record(VALUE, "p.requests", partition=1, offset=0, key=TENANT.encode())))
    assert stage.admitted == []
    assert pub.sent == [("p.requests", VALUE, TENANT, home)]
    asyncio.run(stage.handle(Record(VALUE, "p.requests", partition=home, offset=0, key=TENANT.encode())))
    assert stage.admitted == [home] and len(pub.sent) == 1  # counted there, not sent on again
    # any key at all on the home partition is counted where it is
    asyncio.run(stage.handle(Record(VALUE, "p.requests", partition=home, offset=1, key=b"other")))
    assert stage.admitted == [home, home]


def test_without_a_partition_count_the_key_decides_as_before() -> None:
    pub = RecordingPublisher()
    stage = gate(pub, partitions=None)
    asyncio.run(stage.handle(Record(VALUE, "p.requests", partition=1, offset=0, key=TENANT.encode())))
    assert stage.admitted == [1]
    asyncio.run(stage.handle(Record(VALUE, "p.requests", partition=1, offset=1, key=b"other")))
    assert pub.sent == [("p.requests", VALUE, TENANT, None)]
