"""streams.metrics: registration, increments, rendering, label safety and the /metrics endpoint."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from streams import metrics as metrics_mod
from streams.metrics import AifleetMetrics, safe_label, start_metrics_server
from streams.ops.lag import LagReport, PartitionLag

EXPECTED_FAMILIES = {
    "aifleet_requests",
    "aifleet_request_duration_seconds",
    "aifleet_provider_duration_seconds",
    "aifleet_provider_errors",
    "aifleet_circuit_state",
    "aifleet_consumer_lag",
    "aifleet_lag_collect_errors",
    "aifleet_cache_lookups",
    "aifleet_cost_usd",
    "aifleet_cost_saved_usd",
    "aifleet_tokens",
    "aifleet_recovery_reseeks",
    "aifleet_recovery_stuck_partitions",
}


@pytest.fixture
def m() -> AifleetMetrics:
    return AifleetMetrics(CollectorRegistry(), max_tenants=3)


def value(m: AifleetMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_every_family_is_registered_and_rendered(m: AifleetMetrics) -> None:
    names = {f.name for f in text_string_to_metric_families(m.render().decode())}
    assert names >= EXPECTED_FAMILIES
    assert "process_cpu_seconds" in names  # process collector on the same registry


def test_requests_count_by_stage_and_status(m: AifleetMetrics) -> None:
    m.record_request("gate", "ok")
    m.record_request("gate", "ok")
    m.record_request("dispatch", "error")
    assert value(m, "aifleet_requests_total", stage="gate", status="ok") == 2
    assert value(m, "aifleet_requests_total", stage="dispatch", status="error") == 1
    assert 'aifleet_requests_total{stage="gate",status="ok"} 2.0' in m.render().decode()


def test_latency_histograms_bucket_observations(m: AifleetMetrics) -> None:
    m.observe_request_latency(0.2)
    m.observe_request_latency(4.0, "error")
    m.observe_request_latency(float("nan"))  # ignored
    m.observe_request_latency(-1.0)  # ignored
    assert value(m, "aifleet_request_duration_seconds_count", status="ok") == 1
    assert value(m, "aifleet_request_duration_seconds_bucket", status="ok", le="0.25") == 1
    assert value(m, "aifleet_request_duration_seconds_bucket", status="ok", le="0.1") == 0
    assert value(m, "aifleet_request_duration_seconds_sum", status="error") == 4.0
    m.observe_provider_latency("openai", "gpt-4o-mini", 1.5)
    assert value(m, "aifleet_provider_duration_seconds_bucket", provider="openai", model="gpt-4o-mini", le="2.0") == 1
    assert value(m, "aifleet_provider_duration_seconds_bucket", provider="openai", model="gpt-4o-mini", le="1.0") == 0


def test_provider_errors_and_circuit_state(m: AifleetMetrics) -> None:
    from schemas.errors import ErrorReason

    m.record_provider_error("anthropic", ErrorReason.RATE_LIMITED)
    m.record_provider_error("anthropic", "timeout")
    assert value(m, "aifleet_provider_errors_total", provider="anthropic", reason="rate_limited") == 1
    assert value(m, "aifleet_provider_errors_total", provider="anthropic", reason="timeout") == 1
    m.set_circuit_state("anthropic", "open")
    assert value(m, "aifleet_circuit_state", provider="anthropic") == 2
    m.set_circuit_state("anthropic", "half_open")
    assert value(m, "aifleet_circuit_state", provider="anthropic") == 1
    m.set_circuit_state("anthropic", "closed")
    assert value(m, "aifleet_circuit_state", provider="anthropic") == 0
    with pytest.raises(ValueError, match="unknown circuit state"):
        m.set_circuit_state("anthropic", "broken")  # type: ignore[arg-type]


def test_cache_cost_and_tokens(m: AifleetMetrics) -> None:
    m.record_cache_lookup("exact", hit=True)
    m.record_cache_lookup("exact", hit=False)
    m.record_cache_lookup("semantic", hit=True)
    assert value(m, "aifleet_cache_lookups_total", cache="exact", result="hit") == 1
    assert value(m, "aifleet_cache_lookups_total", cache="exact", result="miss") == 1
    m.add_cost("acme", "openai", 0.0125)
    m.add_cost("acme", "openai", 0.0075)
    m.add_cost("acme", "openai", -3.0)  # ignored, never raises in the hot path
    assert value(m, "aifleet_cost_usd_total", tenant="acme", provider="openai") == pytest.approx(0.02)
    m.add_cost_saved("acme", 0.5)
    assert value(m, "aifleet_cost_saved_usd_total", tenant="acme") == 0.5
    m.add_tokens("openai", 120, 30)
    assert value(m, "aifleet_tokens_total", provider="openai", direction="input") == 120
    assert value(m, "aifleet_tokens_total", provider="openai", direction="output") == 30


def test_consumer_lag_gauges(m: AifleetMetrics) -> None:
    report = LagReport(
        group="aifleet-aifleet",
        partitions=[
            PartitionLag("aifleet.requests", 0, committed=5, start=0, end=12),
            PartitionLag("aifleet.requests", 1, committed=None, start=2, end=4),
        ],
    )
    m.set_consumer_lag(report)
    assert value(m, "aifleet_consumer_lag", group="aifleet-aifleet", topic="aifleet.requests", partition="0") == 7
    assert value(m, "aifleet_consumer_lag", group="aifleet-aifleet", topic="aifleet.requests", partition="1") == 2


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("openai", "openai"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"),
        ("Tell me a story about a dragon", "invalid"),
        ("x" * 65, "invalid"),
        ("", "invalid"),
        ("sk-proj-abc123", "redacted"),
        ("hf_abcdefghijkl", "redacted"),
        ("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "redacted"),  # Azure-style 32 hex key
        ("acme-corporation-production-eu-west-1", "acme-corporation-production-eu-west-1"),
    ],
)
def test_safe_label(raw: str, label: str) -> None:
    assert safe_label(raw) == label


def test_prompts_and_keys_never_reach_labels(m: AifleetMetrics) -> None:
    prompt = "What is my password? It is hunter2"
    key = "sk-live-0123456789abcdef0123456789abcdef"
    m.record_request("gate", prompt)
    m.record_provider_error(key, "authentication")
    m.add_cost(prompt, "openai", 1.0)
    text = m.render().decode()
    assert "hunter2" not in text
    assert key not in text
    assert value(m, "aifleet_requests_total", stage="gate", status="invalid") == 1
    assert value(m, "aifleet_provider_errors_total", provider="redacted", reason="authentication") == 1


def test_tenant_cardinality_is_capped(m: AifleetMetrics) -> None:
    for tenant in ("t1", "t2", "t3", "t4", "t5"):
        m.add_cost(tenant, "openai", 1.0)
    m.add_cost("t1", "openai", 1.0)  # known tenants keep their label
    assert value(m, "aifleet_cost_usd_total", tenant="t1", provider="openai") == 2
    assert value(m, "aifleet_cost_usd_total", tenant="other", provider="openai") == 2
    assert value(m, "aifleet_cost_usd_total", tenant="t4", provider="openai") is None


def test_module_functions_write_the_process_wide_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = AifleetMetrics(CollectorRegistry(), process_metrics=False)
    monkeypatch.setattr(metrics_mod, "_default", fresh)
    metrics_mod.record_request("route", "ok")
    metrics_mod.observe_request_latency(0.01)
    metrics_mod.observe_provider_latency("openai", "gpt-4o", 0.5)
    metrics_mod.record_provider_error("openai", "timeout")
    metrics_mod.set_circuit_state("openai", "open")
    metrics_mod.record_cache_lookup("semantic", hit=False)
    metrics_mod.add_cost("acme", "openai", 0.25)
    metrics_mod.add_cost_saved("acme", 0.1)
    metrics_mod.add_tokens("openai", 1, 2)
    assert metrics_mod.metrics() is fresh
    assert value(fresh, "aifleet_requests_total", stage="route", status="ok") == 1
    assert value(fresh, "aifleet_circuit_state", provider="openai") == 2
    assert value(fresh, "aifleet_cost_usd_total", tenant="acme", provider="openai") == 0.25


def test_metrics_server_serves_the_registry_on_loopback(m: AifleetMetrics) -> None:
    m.record_request("gate", "ok")
    server = start_metrics_server(0, registry=m.registry)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
    finally:
        server.close()
    assert 'aifleet_requests_total{stage="gate",status="ok"} 1.0' in body


def test_metrics_server_port_and_host_from_environment(monkeypatch: pytest.MonkeyPatch, m: AifleetMetrics) -> None:
    monkeypatch.setenv("AIFLEET_METRICS_PORT", "0")
    monkeypatch.setenv("AIFLEET_METRICS_HOST", "127.0.0.1")
    server = start_metrics_server(registry=m.registry)
    try:
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert b"# TYPE aifleet_requests_total counter" in resp.read()
    finally:
        server.close()
