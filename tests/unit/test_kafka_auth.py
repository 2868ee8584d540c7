"""One set of security settings, rendered for each Kafka client library aifleet uses."""

from __future__ import annotations

import ssl
from typing import Any

import faust
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

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


def test_the_cli_clients_use_the_sasl_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aifleet send` (and the benches) built their client without them, so they could not reach a SASL cluster."""
    import streams.client
    from streams.cli import app
    from streams.settings import get_settings

    seen: dict[str, Any] = {}

    class Refused(Exception):
        pass

    class Recording(streams.client.AifleetClient):
        def __init__(self, bootstrap: str, **kwargs: Any) -> None:
            seen.update(kwargs)

        async def __aenter__(self) -> Any:
            raise Refused

        async def __aexit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(streams.client, "AifleetClient", Recording)
    for name, value in {
        "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_MECHANISM": "PLAIN",
        "SASL_USERNAME": "u",
        "SASL_PASSWORD": "p",
    }.items():
        monkeypatch.setenv(f"AIFLEET_KAFKA__{name}", value)
    get_settings.cache_clear()
    try:
        CliRunner().invoke(app, ["send", "hi", "--timeout", "1"])
    finally:
        get_settings.cache_clear()
    options = seen.get("kafka_options") or {}
    assert options.get("security_protocol") == "SASL_PLAINTEXT" and options.get("sasl_plain_username") == "u"
