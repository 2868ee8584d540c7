"""One frozen settings model, read from the environment (``AIFLEET_*``) once at start-up.

Nested fields use ``__``: ``AIFLEET_KAFKA__BOOTSTRAP``. The provider catalog, tiers and
thresholds live in a TOML file (``infra/config/aifleet.toml`` by default, ``AIFLEET_CONFIG_FILE``
to point elsewhere). Secrets are ``SecretStr``: they print as ``**********`` and never reach a
log line, a topic or a table.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.request import Tier

DEFAULT_HOME = Path.home() / ".aifleet"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "infra" / "config"
DEFAULT_CONFIG_FILE = CONFIG_DIR / "aifleet.toml"
BENCH_CONFIG_FILE = CONFIG_DIR / "bench.toml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Where the broker is, and how aifleet's topics are laid out on it."""

    bootstrap: str | None = Field(
        default=None, description="An existing cluster (host:port,...). When unset, aifleet starts its own."
    )
    port: int = Field(default=29092, description="Client port of the embedded broker (below the ephemeral range).")
    controller_port: int = Field(default=29093, description="KRaft controller port of the embedded broker.")
    data_dir: Path | None = Field(default=None, description="Embedded broker's log dir (default under home).")
    heap_mb: int = 512
    kafka_version: str = "4.1.1"
    topic_prefix: str = Field(default="aifleet", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None


class WorkerSettings(_Section):
    """How a worker process consumes and how much it keeps in flight."""

    app_id: str = "aifleet"
    max_in_flight: int = Field(default=256, ge=1, description="Requests one dispatch worker holds at once.")
    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="Larger requests go to the DLQ.")
    dlq_max_payload_bytes: int = Field(
        default=700_000,
        ge=0,
        description=(
            "Dead letters keep at most this much of the record (base64, so 4/3 as large on the wire). "
            "The default keeps a letter under a stock broker's 1 MB record limit (message.max.bytes)."
        ),
    )
    commit_interval_s: float = 1.0
    session_timeout_s: float = Field(default=30.0, gt=0, description="A dead worker's partitions move after this.")
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    producer_linger_ms: int = 2
    fetch_max_wait_ms: int = Field(default=20, ge=0, description="Longest a consumer fetch waits at the broker.")
    fetch_min_bytes: int = Field(
        default=1, ge=1, description="Bytes a fetch waits for (up to fetch_max_wait_ms): >1 trades latency for CPU."
    )
    web_port: int | None = Field(default=None, description="Faust web port; None disables the web server.")
    table_store: str = Field(default="memory://", description="Faust table store: memory:// or rocksdb://.")
    recovery_stall_s: float = Field(
        default=15.0,
        gt=0,
        description="A changelog partition in table recovery that receives no record for this long, with records "
        "left below its highwater, is re-seeked by the recovery watchdog (streams.recovery_watch).",
    )
    recovery_max_reseeks: int = Field(
        default=3, ge=1, description="Re-seeks without progress after which the watchdog logs an ERROR."
    )


class ResilienceSettings(_Section):
    """Circuit breakers, retries and rate-limit waiting for provider calls."""

    breaker_failures: int = Field(default=5, ge=1, description="Consecutive failures that open a circuit.")
    breaker_recovery_s: float = Field(default=60.0, gt=0, description="Open time before one half-open probe.")
    retry_attempts: int = Field(default=3, ge=1, description="Tries per provider before falling back.")
    retry_base_delay_s: float = Field(default=0.2, ge=0)
    retry_max_delay_s: float = Field(default=5.0, ge=0)
    limiter_wait_s: float = Field(default=1.0, ge=0, description="Longest wait for our rate-limit share.")
    limiter_margin_s: float = Field(
        default=1.0,
        ge=0,
        description="Seconds added to the 60 s rate-limit window: the most a call's way to the provider varies "
        "(grants spread over 60 s must not arrive within less).",
    )
    fallback_reserve: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Share of the remaining deadline a provider call leaves for the fallbacks after it.",
    )
    timeout_blame_s: float = Field(
        default=5.0,
        ge=0,
        description="A call cut by its time cap counts against the breaker only if it was given this long.",
    )


class InferSettings(_Section):
    """Local ONNX inference: how the infer agent forms micro-batches from the stream."""

    max_batch: int = Field(default=64, ge=1, description="Requests per micro-batch at most.")
    max_wait_ms: float = Field(default=5.0, ge=0, description="Longest a request waits for its batch.")


class AnalyticsSettings(_Section):
    """The analytics process: usage sink batching and the alerting agents."""

    batch_size: int = Field(default=2000, ge=1, description="Usage events per ClickHouse insert at most.")
    batch_within_s: float = Field(default=1.0, gt=0, description="Longest a usage event waits for its batch.")
    retry_backoff_s: float = Field(default=1.0, gt=0, description="Wait between inserts while ClickHouse is down.")
    alert_every_s: float = Field(default=10.0, gt=0, description="How often the alert rules are evaluated.")
    alert_window_s: float = Field(default=300.0, gt=0, description="Sliding window the rules look at.")
    alert_warn_after_s: float = Field(default=300.0, ge=0, description="A condition held this long: warning.")
    alert_critical_after_s: float = Field(default=120.0, ge=0, description="...then this much longer: critical.")
    alert_cooldown_s: float = Field(default=600.0, ge=0, description="Quiet time after a resolution.")
    alert_min_requests: int = Field(default=20, ge=1, description="Fewer requests in the window: no rate rules.")
    alert_source: Literal["auto", "stream", "store"] = Field(
        default="auto",
        description="What the rate rules read: 'stream', this process's window of the usage topic (complete only "
        "when one analytics process runs, as chDB requires); 'store', the usage table in ClickHouse (complete "
        "however many run). 'auto': stream on chDB, store on a server.",
    )
    alert_budget_every_s: float = Field(default=60.0, gt=0, description="How often tenant spend is re-read.")
    webhook_url: SecretStr | None = Field(default=None, description="Slack-compatible webhook for alerts.")
    query_port: int = Field(default=0, ge=0, description="Embedded mode: port of the read-only query endpoint.")


class CacheSettings(_Section):
    """Dedup and caching: idempotency, coalescing, the exact cache and the semantic cache."""

    enabled: bool = Field(default=True, description="Off: every request calls a provider.")
    backend: Literal["table", "redis"] = Field(
        default="table", description="table: changelog-backed Faust table; redis: a Redis server (shared scopes)."
    )
    table_store: str = Field(
        default="rocksdb://", description="Store of the cache table: rocksdb:// (on disk, sized by disk) or memory://."
    )
    redis_url: SecretStr = Field(default=SecretStr("redis://127.0.0.1:6379/0"), description="Redis backend URL.")
    redis_prefix: str = Field(default="aifleet:cache", description="Key prefix in Redis (one per deployment).")
    idempotency_window_s: float = Field(default=86_400.0, gt=0, description="How long an idempotency key holds.")
    pending_grace_s: float = Field(
        default=5.0, ge=0, description="A pending entry older than its leader's deadline plus this is taken over."
    )
    semantic_threshold: float = Field(
        default=0.9, gt=0, le=1, description="Cosine similarity at or above which a paraphrase is a hit."
    )
    sweep_every_s: float = Field(default=300.0, gt=0, description="How often expired entries are dropped.")
    semantic_max_per_scope: int = Field(default=10_000, ge=1, description="Vectors kept per scope and namespace.")


class EmulatorSettings(_Section):
    """The provider emulator that `aifleet up` starts when no provider key is set."""

    host: str = "127.0.0.1"
    port: int = 28080
    latency_ms: float = 0.0


def clean_api_key(value: SecretStr | None, where: str) -> SecretStr | None:
    """``value`` with surrounding whitespace stripped (a secrets file's trailing newline); None when empty.

    A key with whitespace or control characters inside it could never travel in a header: ``ValueError``
    naming ``where``, never quoting the key.
    """
    if value is None:
        return None
    key = value.get_secret_value().strip()
    if not key:
        return None
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ValueError(f"{where}: the API key has whitespace or control characters inside it")
    return value if key == value.get_secret_value() else SecretStr(key)


class ProviderKeys(_Section):
    """API keys, from the environment or a secrets directory only.

    Keys are stripped of surrounding whitespace (a secrets file's trailing newline); a key with whitespace
    or control characters inside is a configuration error, reported without the key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    openai: SecretStr | None = None
    azure_openai: SecretStr | None = None
    anthropic: SecretStr | None = None
    xai: SecretStr | None = None
    huggingface: SecretStr | None = None

    @field_validator("*")
    @classmethod
    def _clean(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return clean_api_key(value, f"keys.{info.field_name}")


class ClickHouseSettings(_Section):
    """The analytics store: chDB in-process by default, a ClickHouse server in production."""

    backend: Literal["chdb", "http"] = "chdb"
    url: str = "http://127.0.0.1:8123"
    username: str = "default"
    password: SecretStr | None = None
    database: str = "aifleet"
    data_path: Path | None = None
    cluster: str | None = None
    store_prompts: bool = False
    ttl_days: int = Field(
        default=90,
        ge=1,
        description="Days usage events and prompts are kept: the TTL `analytics migrate` renders (unless --ttl-days), "
        "and the sink drops events older than this (the table would drop them, but the rollups would count them).",
    )
    backup_path: Path | None = Field(
        default=None,
        description="chDB: where `analytics backup` writes and the only place BACKUP/RESTORE may touch "
        "(the engine's backups.allowed_path; default <home>/backups). A server needs its own backups.allowed_path.",
    )


class Settings(BaseSettings):
    """Everything configurable about a deployment, loaded once."""

    model_config = SettingsConfigDict(
        env_prefix="AIFLEET_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # a rejected value may be a secret (an API key, a password)
    )

    home: Path = DEFAULT_HOME
    config_file: Path = DEFAULT_CONFIG_FILE
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    kafka: KafkaSettings = KafkaSettings()
    worker: WorkerSettings = WorkerSettings()
    emulator: EmulatorSettings = EmulatorSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    infer: InferSettings = InferSettings()
    keys: ProviderKeys = ProviderKeys()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    cache: CacheSettings = CacheSettings()

    default_tier: Tier = Field(default="pro", description="Tier of tenants the tenant registry does not list.")
    provider_base_url: str | None = Field(
        default=None, description="Send every provider call here instead (the emulator): <url>/<provider>/..."
    )

    metrics_port: int | None = Field(default=None, description="Prometheus /metrics port; None: no endpoint.")

    # Flat aliases for the settings people set most often.
    kafka_bootstrap: str | None = Field(default=None, description="Same as kafka.bootstrap.")

    @property
    def bootstrap(self) -> str | None:
        """The external cluster to use, or None when aifleet runs its own broker."""
        return self.kafka_bootstrap or self.kafka.bootstrap

    @property
    def kafka_servers(self) -> str:
        """Where clients connect: the external cluster when one is set, else the embedded broker."""
        return self.bootstrap or f"127.0.0.1:{self.kafka.port}"

    @property
    def pipeline_group(self) -> str:
        """The workers' Faust app id, which is their consumer group (and prefixes their table changelogs)."""
        return f"{self.worker.app_id}-{self.kafka.topic_prefix}"

    @property
    def analytics_group(self) -> str:
        """The analytics process's Faust app id and consumer group."""
        return f"{self.worker.app_id}-analytics-{self.kafka.topic_prefix}"

    @property
    def usage_sink_group(self) -> str:
        """The usage sink's consumer group on the usage topic (``analytics rebuild`` moves its offsets)."""
        return f"{self.worker.app_id}-usage-sink-{self.kafka.topic_prefix}"

    @property
    def broker_data_dir(self) -> Path:
        """Where the embedded broker keeps its log segments."""
        return self.kafka.data_dir or self.home / "kafka" / f"data-{self.kafka.port}"

    def has_provider_keys(self) -> bool:
        """True when at least one real provider key is configured."""
        return any(v is not None for v in self.keys.model_dump().values())

    def topic(self, name: str) -> str:
        """A topic name under this deployment's prefix."""
        return f"{self.kafka.topic_prefix}.{name}"


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str], drop_prefixes: tuple[str, ...] = ()) -> Iterator[None]:
    """Set ``values`` (and drop variables starting with ``drop_prefixes``) in ``os.environ`` while inside.

    Settings are read from the environment, and children started inside inherit it. Exactly the
    variables touched are restored afterwards.
    """
    dropped = [k for k in os.environ if k.startswith(drop_prefixes)] if drop_prefixes else []
    saved = {k: os.environ.get(k) for k in [*values, *dropped]}
    for key in dropped:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
