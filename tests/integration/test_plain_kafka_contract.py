"""Any Kafka client can use aifleet from the JSON contract alone: here confluent-kafka, no aifleet code."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.fixtures.pipeline import pipeline_env, running_stack

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_plain_confluent_kafka_producer_and_consumer(kafka_bootstrap: str, aifleet_home: Path) -> None:
    env = pipeline_env(kafka_bootstrap, aifleet_home)
    prefix = env["AIFLEET_KAFKA__TOPIC_PREFIX"]
    with running_stack(env, workers=1):
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"plain-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.assign([TopicPartition(f"{prefix}.responses", p) for p in range(4)])
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        ids = [f"plain-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
        for i, rid in enumerate(ids):
            doc = {  # hand-written JSON, as a producer in any language would send it
                "schema_version": 1,
                "request_id": rid,
                "tenant": "plain-tenant",
                "kind": "chat",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hello {i}"}],
                "max_tokens": 64,
            }
            producer.produce(f"{prefix}.requests", json.dumps(doc).encode(), key=b"plain-tenant")
        assert producer.flush(30) == 0
        got: dict[str, dict] = {}
        deadline = time.monotonic() + 90
        while len(got) < len(ids) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            doc = json.loads(msg.value())
            if doc["request_id"] in ids:  # the stack's warm-up answer is on the topic too
                got[doc["request_id"]] = doc
        consumer.close()
    assert set(got) == set(ids)
    for doc in got.values():
        assert doc["schema_version"] == 1
        assert doc["status"] == "ok"
        assert doc["output"].startswith("Echo:")
        assert doc["usage"]["input_tokens"] > 0 and doc["usage"]["output_tokens"] > 0
        assert doc["cost_usd"] > 0
        assert doc["provider"] == "openai" and doc["model"] == "gpt-4o-mini"
