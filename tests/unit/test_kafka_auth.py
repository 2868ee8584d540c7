"""One set of security settings, rendered for each Kafka client library aifleet uses."""

from __future__ import annotations

import ssl

import faust
from pydantic import SecretStr

from streams.kafka_auth import aiokafka_options, faust_credentials, librdkafka_config
from streams.settings import KafkaSettings, Settings


def sasl(protocol: str = "SASL_SSL") -> Settings:
    return Settings(
        kafka=KafkaSettings(
            bootstrap="k:9093",
            security_protocol=protocol,  # type: ignore[arg-type]
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="aifleet",
            sasl_password=SecretStr("pw"),
        )
    )


def test_plaintext_adds_nothing() -> None:
    plain = Settings(kafka_bootstrap="k1:9092,k2:9092")
    assert librdkafka_config(plain) == {"bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "PLAINTEXT"}
    assert aiokafka_options(plain) == {}
    assert faust_credentials(plain) is None


def test_sasl_settings_reach_every_client_library() -> None:
    assert librdkafka_config(sasl(), "override:9093") == {
        "bootstrap.servers": "override:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "aifleet",
        "sasl.password": "pw",
    }
    options = aiokafka_options(sasl())
    assert isinstance(options.pop("ssl_context"), ssl.SSLContext)
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "aifleet",
        "sasl_plain_password": "pw",
    }
    assert "ssl_context" not in aiokafka_options(sasl("SASL_PLAINTEXT"))
    credentials = faust_credentials(sasl())
    assert isinstance(credentials, faust.SASLCredentials) and credentials.username == "aifleet"
