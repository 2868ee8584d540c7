"""A secured cluster: every Kafka client aifleet runs authenticates with the same SASL settings.

A broker is started here whose only listener for clients that the stack is told about is
SASL_PLAINTEXT (mechanism PLAIN, one user). Topic creation and group checks (librdkafka), the workers
and the analytics process (Faust), the health feed and the client (aiokafka) must all authenticate, or
nothing is answered. A wrong password is refused at connection time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from infra.kafka import broker
from schemas.health import ProviderHealth
from streams.admin import ensure_topics
from streams.client import AifleetClient
from streams.health_feed import follow_health
from streams.kafka_auth import aiokafka_options, librdkafka_config
from streams.settings import Settings
from tests.fixtures.pipeline import _jar_cache, free_port, free_port_pair, patched_env, pipeline_env, running_stack
from tests.fixtures.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

USER, PASSWORD = "aifleet", f"pw-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[broker.BrokerConfig]:
    port = free_port_pair()
    cfg = broker.BrokerConfig(
        port=port,
        controller_port=port + 1,
        data_dir=tmp_path_factory.mktemp("sasl-broker") / "kafka-data",
        cache_dir=_jar_cache(),
        heap_mb=512,
        sasl_port=free_port(),
        sasl_users=((USER, PASSWORD),),
    )
    broker.start(cfg)
    try:
        yield cfg
    finally:
        broker.stop(cfg)


def sasl_env(bootstrap: str, home: Path, password: str = PASSWORD) -> dict[str, str]:
    return pipeline_env(
        bootstrap,
        home,
        AIFLEET_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        AIFLEET_KAFKA__SASL_MECHANISM="PLAIN",
        AIFLEET_KAFKA__SASL_USERNAME=USER,
        AIFLEET_KAFKA__SASL_PASSWORD=password,
    )


async def test_the_pipeline_answers_through_a_sasl_listener(
    sasl_broker: broker.BrokerConfig, aifleet_home: Path
) -> None:
    assert sasl_broker.sasl_bootstrap is not None
    env = sasl_env(sasl_broker.sasl_bootstrap, aifleet_home)
    with patched_env(env):
        settings = Settings()
    options = aiokafka_options(settings)
    with running_stack(env, workers=1):  # creates the topics and waits for an answer, all through SASL
        async with AifleetClient(
            sasl_broker.sasl_bootstrap, topic_prefix=settings.kafka.topic_prefix, kafka_options=options
        ) as client:
            answers = await asyncio.gather(*(client.ask(f"secured question {i}", tenant="bench") for i in range(5)))
        assert [a.status for a in answers] == ["ok"] * 5

        refused = {**options, "sasl_plain_password": "not-the-password"}
        with pytest.raises(KafkaError):
            async with AifleetClient(
                sasl_broker.sasl_bootstrap, topic_prefix=settings.kafka.topic_prefix, kafka_options=refused
            ):
                pass


async def test_the_health_feed_follows_through_a_sasl_listener(
    sasl_broker: broker.BrokerConfig, aifleet_home: Path
) -> None:
    assert sasl_broker.sasl_bootstrap is not None
    with patched_env(sasl_env(sasl_broker.sasl_bootstrap, aifleet_home)):
        settings = Settings()
    topic = f"sasl{uuid.uuid4().hex[:8]}.health"
    ensure_topics(sasl_broker.sasl_bootstrap, [topic], partitions=2, client_config=librdkafka_config(settings))
    options = aiokafka_options(settings)
    heard: list[ProviderHealth] = []
    follower = asyncio.create_task(
        follow_health(
            heard.append, bootstrap=sasl_broker.sasl_bootstrap, topic=topic, lookback_s=60, kafka_options=options
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=sasl_broker.sasl_bootstrap, **options)
    await producer.start()
    try:
        event = ProviderHealth(provider="openai", state="open", worker="w1")
        await producer.send_and_wait(topic, event.to_json(), key=b"openai")
        await eventually(lambda: bool(heard), 20.0, what="the health event heard")
        assert heard == [event]
    finally:
        await producer.stop()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
