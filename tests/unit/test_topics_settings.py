"""Topic namespaces, settings loading and secret redaction."""

from __future__ import annotations

import pytest

from streams.settings import Settings
from streams.topics import Topics


def test_reply_topics_are_limited_to_the_tenants_namespace() -> None:
    t = Topics("aifleet")
    assert t.reply_allowed("acme", "aifleet.responses")
    assert t.reply_allowed("acme", "aifleet.responses.acme")
    assert t.reply_allowed("acme", "aifleet.responses.acme.batch")
    assert not t.reply_allowed("acme", "aifleet.responses.acmex")
    assert not t.reply_allowed("acme", "aifleet.responses.other")
    assert not t.reply_allowed("acme", "aifleet.usage")
    assert t.chunks_for("aifleet.responses.acme") == "aifleet.chunks.acme"
    assert t.chunks_for("aifleet.responses") == "aifleet.chunks"


def test_settings_from_environment_and_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFLEET_KAFKA_BOOTSTRAP", "broker:9092")
    monkeypatch.setenv("AIFLEET_KAFKA__TOPIC_PREFIX", "staging")
    monkeypatch.setenv("AIFLEET_KEYS__OPENAI", "sk-very-secret")
    s = Settings()
    assert s.bootstrap == "broker:9092"
    assert s.topic("requests") == "staging.requests"
    assert s.has_provider_keys()
    assert s.keys.openai is not None and s.keys.openai.get_secret_value() == "sk-very-secret"
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "sk-very-secret" not in text


def test_patched_environ_sets_drops_and_restores_exactly_what_it_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from streams.settings import patched_environ

    monkeypatch.setenv("AIFLEET_KEYS__OPENAI", "sk-test")
    monkeypatch.delenv("AIFLEET_KAFKA__PARTITIONS", raising=False)
    with patched_environ({"AIFLEET_KAFKA__PARTITIONS": "8"}, drop_prefixes=("AIFLEET_KEYS__",)):
        assert os.environ["AIFLEET_KAFKA__PARTITIONS"] == "8"
        assert "AIFLEET_KEYS__OPENAI" not in os.environ
    assert "AIFLEET_KAFKA__PARTITIONS" not in os.environ
    assert os.environ["AIFLEET_KEYS__OPENAI"] == "sk-test"
