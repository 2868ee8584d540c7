"""How aifleet authenticates to Kafka, once per client library it uses.

The workers run Faust (aiokafka underneath); the health feed and ``AifleetClient`` use aiokafka
directly; topic creation, consumer-group checks, lag, cache purges and rebuilds use librdkafka
(confluent-kafka). All three read the same settings (``AIFLEET_KAFKA__SECURITY_PROTOCOL``,
``..._SASL_MECHANISM``, ``..._SASL_USERNAME``, ``..._SASL_PASSWORD``), so a secured cluster is one
configuration, not three. SSL uses the system's trust store.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from streams.settings import Settings


def librdkafka_config(settings: Settings, bootstrap: str | None = None) -> dict[str, str]:
    """confluent-kafka client configuration for the deployment's cluster, security included."""
    k = settings.kafka
    conf: dict[str, str] = {
        "bootstrap.servers": bootstrap or settings.kafka_servers,
        "security.protocol": k.security_protocol,
    }
    if k.security_protocol.startswith("SASL"):
        if k.sasl_mechanism:
            conf["sasl.mechanism"] = k.sasl_mechanism
        if k.sasl_username:
            conf["sasl.username"] = k.sasl_username
        if k.sasl_password is not None:
            conf["sasl.password"] = k.sasl_password.get_secret_value()
    return conf


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer and admin client (empty on PLAINTEXT)."""
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if k.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = k.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = k.sasl_username
        options["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` (None on PLAINTEXT)."""
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    if k.sasl_mechanism and k.sasl_username and k.sasl_password:
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value(),
            mechanism=k.sasl_mechanism,
            ssl_context=ssl.create_default_context() if k.security_protocol == "SASL_SSL" else None,
        )
    return faust.SSLCredentials(ssl.create_default_context())


__all__ = ["aiokafka_options", "faust_credentials", "librdkafka_config"]
