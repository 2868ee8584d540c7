"""Deployment files: docker-compose.yml, the image, Prometheus, Grafana dashboards and the k8s/KEDA manifests.

They are parsed and checked against the code they serve: settings variables must load into
``Settings``, dashboards and alert rules may only query metrics that ``streams.metrics`` defines,
KEDA must watch the workers' group and topics at the advisor's threshold.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML (a dependency of huggingface_hub in this environment)

from prometheus_client import CollectorRegistry  # noqa: E402

from streams.metrics import DEFAULT_METRICS_PORT, AifleetMetrics  # noqa: E402
from streams.ops.cli import default_group, default_topics  # noqa: E402
from streams.ops.scale import ScalePolicy  # noqa: E402
from streams.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
K8S = ROOT / "infra" / "k8s"

SERVICES = {"kafka", "clickhouse", "clickhouse-migrate", "emulator", "worker", "lag-exporter", "prometheus", "grafana"}
AIFLEET_IMAGE_SERVICES = {"clickhouse-migrate", "emulator", "worker", "lag-exporter"}
ONE_SHOT = {"clickhouse-migrate"}
PUBLISHED = {
    "kafka": ["127.0.0.1:9094:9094"],
    "clickhouse": ["127.0.0.1:8123:8123"],
    "emulator": ["127.0.0.1:38080:38080"],
    "prometheus": ["127.0.0.1:9090:9090"],
    "grafana": ["127.0.0.1:3000:3000"],
}
DEPENDS = {
    "clickhouse-migrate": {"clickhouse": "service_healthy"},
    "worker": {
        "kafka": "service_healthy",
        "clickhouse": "service_healthy",
        "clickhouse-migrate": "service_completed_successfully",
        "emulator": "service_healthy",
    },
    "lag-exporter": {"kafka": "service_healthy"},
    "prometheus": {"lag-exporter": "service_started"},
    "grafana": {"prometheus": "service_healthy"},
}
# Settings-like variables that are read outside pydantic-settings (by streams.metrics).
NON_SETTINGS_VARS = {"AIFLEET_METRICS_HOST", "AIFLEET_METRICS_PORT"}
BUILTIN_METRICS = {"up", "process_cpu_seconds_total"}

_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err} with ``env`` (default: empty)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, dash_op, default, q_op, _msg = m.groups()
        if name in env:
            return env[name]
        if dash_op:
            return default
        if q_op:
            raise KeyError(f"required variable {name} not set")
        return ""

    return _VAR.sub(sub, value)


def metric_names() -> set[str]:
    """Every sample name streams.metrics can expose."""
    m = AifleetMetrics(CollectorRegistry(), process_metrics=False)
    names: set[str] = set()
    for family in m.registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count", f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


def referenced_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(aifleet_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?=\s*[{\[)\s,]|$)", expr))


# -- compose -------------------------------------------------------------------------------------------
def test_compose_declares_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no"
            continue
        hc = svc.get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL") and len(hc["test"]) >= 2, name
        for key in ("interval", "timeout", "retries"):
            assert key in hc, (name, key)


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {n: s["ports"] for n, s in compose["services"].items() if "ports" in s}
    assert published == PUBLISHED
    assert "ports" not in compose["services"]["worker"]  # replicas would collide


def test_dependencies_and_their_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        assert {d: c["condition"] for d, c in deps.items()} == DEPENDS.get(name, {}), name
        for dep, cond in deps.items():
            assert dep in services
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy but it has no check"
            if cond["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOT


def test_aifleet_services_build_the_image_and_run_the_cli(compose: dict[str, Any]) -> None:
    for name in AIFLEET_IMAGE_SERVICES:
        svc = compose["services"][name]
        assert svc["build"]["dockerfile"] == "infra/docker/Dockerfile"
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert compose["services"]["worker"]["command"] == ["aifleet", "worker"]
    assert compose["services"]["emulator"]["command"][:2] == ["aifleet", "emulator"]
    assert "lag-exporter" in compose["services"]["lag-exporter"]["command"]
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@pytest.mark.parametrize("service", ["worker", "lag-exporter", "clickhouse-migrate"])
def test_aifleet_environment_loads_into_settings(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = interpolate(compose["services"][service]["environment"])
    for key in list(os.environ):
        if key.startswith("AIFLEET_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        assert key.startswith("AIFLEET_"), key
        monkeypatch.setenv(key, str(value))
    s = Settings()  # extra="forbid" on every section: a misspelt nested variable fails here
    assert s.bootstrap == "kafka:9092"
    assert s.kafka.topic_prefix == "aifleet"
    assert s.clickhouse.backend == "http"
    assert s.clickhouse.url == "http://clickhouse:8123"
    assert default_group(s) == "aifleet-aifleet"
    assert env["AIFLEET_METRICS_PORT"] == str(DEFAULT_METRICS_PORT)
    assert env["AIFLEET_METRICS_HOST"] == "0.0.0.0"
    if service == "worker":
        assert s.provider_base_url == "http://emulator:38080"
    unknown = {
        k
        for k in env
        if k not in NON_SETTINGS_VARS and k.split("__")[0].removeprefix("AIFLEET_").lower() not in Settings.model_fields
    }
    assert not unknown


def test_required_secrets_are_declared_and_never_inlined(compose: dict[str, Any]) -> None:
    secrets = compose["secrets"]
    assert secrets["clickhouse_password"] == {"environment": "CLICKHOUSE_PASSWORD"}
    assert secrets["grafana_admin_password"] == {"environment": "GRAFANA_ADMIN_PASSWORD"}
    default_keys = interpolate(secrets["provider_keys"]["file"])
    assert (ROOT / default_keys).is_file()
    assert all(
        line.endswith("=")
        for line in (ROOT / default_keys).read_text().splitlines()
        if line and not line.startswith("#")
    ), "the example keys file must hold no keys"
    ch = compose["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"]
    assert ch.startswith("${CLICKHOUSE_PASSWORD:?")
    with pytest.raises(KeyError, match="CLICKHOUSE_PASSWORD"):
        interpolate(compose["services"]["clickhouse"]["environment"])
    targets = {s["target"] for s in compose["services"]["worker"]["secrets"]}
    assert targets == {"AIFLEET_CLICKHOUSE__PASSWORD", "provider-keys.env"}
    assert compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    secretish = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY$|KEYS__)")
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secretish.search(key) and not key.endswith("__FILE"):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}.{key} holds a literal secret"


def test_entrypoint_turns_secret_files_into_settings_variables(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "AIFLEET_CLICKHOUSE__PASSWORD").write_text("ch-pw")
    (secrets / "AIFLEET_KEYS__XAI").write_text("")
    (secrets / "provider-keys.env").write_text(
        "# comment\nAIFLEET_KEYS__OPENAI='sk-a=b'\nAIFLEET_KEYS__ANTHROPIC=\nPATH=/evil\nAIFLEET_bad-name=1\n"
    )
    script = (
        'printf \'%s|%s|%s|%s\' "$AIFLEET_CLICKHOUSE__PASSWORD" "${AIFLEET_KEYS__OPENAI-unset}" '
        '"${AIFLEET_KEYS__ANTHROPIC-unset}" "${AIFLEET_KEYS__XAI-unset}"; test "$PATH" != /evil'
    )
    env = {"PATH": os.environ["PATH"], "AIFLEET_SECRETS_DIR": str(secrets)}
    out = subprocess.run(
        ["sh", str(ROOT / "infra/docker/entrypoint.sh"), "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout == "ch-pw|sk-a=b|unset|unset"


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    text = (ROOT / "infra/docker/Dockerfile").read_text()
    assert re.search(r"^USER aifleet$", text, re.M)
    assert 'ENTRYPOINT ["aifleet-entrypoint"]' in text
    assert 'CMD ["aifleet", "worker"]' in text
    assert f"AIFLEET_METRICS_PORT={DEFAULT_METRICS_PORT}" in text
    ignore = (ROOT / "infra/docker/Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[0] == "*"  # deny by default
    assert {"!streams/", "!schemas/", "!models/", "!infra/", "!pyproject.toml"} <= set(ignore)


# -- prometheus ----------------------------------------------------------------------------------------
def test_prometheus_scrapes_workers_and_lag_exporter(compose: dict[str, Any]) -> None:
    cfg = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["aifleet-workers"]["dns_sd_configs"][0] == {
        "names": ["worker"],
        "type": "A",
        "port": DEFAULT_METRICS_PORT,
        "refresh_interval": "15s",
    }
    assert jobs["aifleet-lag-exporter"]["static_configs"][0]["targets"] == [f"lag-exporter:{DEFAULT_METRICS_PORT}"]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_alert_rules_use_defined_metrics() -> None:
    defined = metric_names() | BUILTIN_METRICS
    rules = yaml.safe_load((ROOT / "infra/prometheus/rules/aifleet.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        used = referenced_metrics(expr)
        assert used <= defined, used - defined


# -- grafana -------------------------------------------------------------------------------------------
def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_exprs(d: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for var in d.get("templating", {}).get("list", []):
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else str(q or ""))
    return exprs


def test_dashboards_parse_and_cover_cost_latency_and_provider_health() -> None:
    ds = dashboards()
    assert set(ds) == {"aifleet-cost.json", "aifleet-latency.json", "aifleet-provider-health.json"}
    uids = [d["uid"] for d in ds.values()]
    assert len(set(uids)) == len(uids)
    for name, d in ds.items():
        assert d["panels"], name
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids), name


def test_dashboards_query_only_metrics_that_streams_metrics_defines() -> None:
    defined = metric_names() | BUILTIN_METRICS
    used_anywhere: set[str] = set()
    for name, d in dashboards().items():
        for expr in dashboard_exprs(d):
            used = referenced_metrics(expr)
            assert used <= defined, (name, expr, used - defined)
            used_anywhere |= used
    # every pipeline metric (except the exporter's own error counter, alerted on) is on a dashboard
    families = {n.removesuffix("_total").removesuffix("_bucket").removesuffix("_count") for n in used_anywhere}
    expected = {f.name for f in AifleetMetrics(CollectorRegistry(), process_metrics=False).registry.collect()}
    assert expected - families == {"aifleet_lag_collect_errors"}


def test_dashboards_use_the_provisioned_datasource(compose: dict[str, Any]) -> None:
    prov = yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = prov["datasources"][0]["uid"]
    assert prov["datasources"][0]["url"] == "http://prometheus:9090"
    for name, d in dashboards().items():
        for p in d["panels"]:
            assert p["datasource"]["uid"] == uid, (name, p["title"])
    providers = yaml.safe_load((ROOT / "infra/grafana/provisioning/dashboards/aifleet.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert f"./infra/grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path) and (DASHBOARDS / Path(home).name).is_file()


# -- kubernetes / KEDA -----------------------------------------------------------------------------------
def k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and "metadata" in doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_kustomization_lists_every_manifest() -> None:
    kz = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kz["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_keda_scales_the_worker_group_on_lag_of_its_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AIFLEET_"):
            monkeypatch.delenv(key)
    docs = k8s_docs()
    so = docs[("ScaledObject", "aifleet-worker")]
    deploy = docs[("Deployment", "aifleet-worker")]
    config = docs[("ConfigMap", "aifleet-config")]["data"]
    assert so["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    policy = ScalePolicy()
    s = Settings()
    kafka = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
    assert {t["metadata"]["topic"] for t in kafka} == set(default_topics(s)) == {"aifleet.requests", "aifleet.routed"}
    for t in kafka:
        md = t["metadata"]
        assert md["consumerGroup"] == default_group(s) == "aifleet-aifleet"
        assert md["lagThreshold"] == str(policy.target_lag_per_worker) == "100"
        assert md["bootstrapServers"] == config["AIFLEET_KAFKA_BOOTSTRAP"]
        assert md["allowIdleConsumers"] == "false"  # never more workers than partitions
        assert md["offsetResetPolicy"] == "earliest"
    cpu = next(t for t in so["spec"]["triggers"] if t["type"] == "cpu")
    assert float(cpu["metadata"]["value"]) == policy.cpu_target_pct
    latency = next(t for t in so["spec"]["triggers"] if t["type"] == "prometheus")
    assert float(latency["metadata"]["threshold"]) == policy.latency_target_s
    assert referenced_metrics(latency["metadata"]["query"]) <= metric_names()
    assert so["spec"]["minReplicaCount"] == 1
    assert so["spec"]["maxReplicaCount"] == int(config["AIFLEET_KAFKA__PARTITIONS"])
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == policy.cooldown_s
    assert behavior["scaleUp"]["policies"][0] == {"type": "Percent", "value": 50, "periodSeconds": 60}


def test_worker_deployment_service_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = k8s_docs()
    deploy = docs[("Deployment", "aifleet-worker")]
    svc = docs[("Service", "aifleet-worker-metrics")]
    config = docs[("ConfigMap", "aifleet-config")]["data"]
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["aifleet", "worker"]
    assert deploy["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": DEFAULT_METRICS_PORT}
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    refs = container["envFrom"]
    assert {"configMapRef": {"name": "aifleet-config"}} in refs
    assert {"secretRef": {"name": "aifleet-secrets", "optional": True}} in refs
    for key in list(os.environ):
        if key.startswith("AIFLEET_"):
            monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.bootstrap == config["AIFLEET_KAFKA_BOOTSTRAP"]
    assert s.clickhouse.backend == "http"
    assert default_group(s) == "aifleet-aifleet"


def test_the_compose_clickhouse_allows_backups_in_its_backup_volume(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["clickhouse"]["volumes"]
    assert "clickhouse-backups:/backups" in volumes and "clickhouse-backups" in compose["volumes"]
    mount = next(v for v in volumes if v.endswith("config.d/backups.xml:ro"))
    config = ROOT / mount.split(":")[0]
    import xml.etree.ElementTree as ET

    assert ET.parse(config).getroot().findtext("backups/allowed_path") == "/backups/"
    aifleet_env = compose["services"]["worker"]["environment"]
    assert aifleet_env["AIFLEET_CLICKHOUSE__BACKUP_PATH"] == "/backups"  # the CLI's default location, server-side
