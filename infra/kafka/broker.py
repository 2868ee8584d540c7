"""Bootstrap of a single-node KRaft Apache Kafka broker from the jars Maven Central serves.

``aifleet broker start|stop|status`` and the test fixtures use this module. The jars are fetched
once by ``infra/kafka/pom.xml`` into a cache outside git; the storage directory is formatted on
first start (``kafka.tools.StorageTool format --standalone``); the broker runs in its own
process session, logs to a file, and is stopped by the pid this module recorded, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.errors import BrokerError

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"


@dataclass(frozen=True)
class BrokerConfig:
    """Where one embedded broker listens and keeps its files."""

    port: int
    controller_port: int
    data_dir: Path
    cache_dir: Path
    kafka_version: str = "4.1.1"
    heap_mb: int = 512
    host: str = "127.0.0.1"
    # A SASL_PLAINTEXT listener (mechanism PLAIN) with these (user, password) pairs, for testing secured
    # clients. The PLAINTEXT listener stays: the broker's own controller and start-up checks use it.
    sasl_port: int | None = None
    sasl_users: tuple[tuple[str, str], ...] = ()

    @property
    def sasl_bootstrap(self) -> str | None:
        return f"{self.host}:{self.sasl_port}" if self.sasl_port is not None else None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / f"kafka-{self.kafka_version}" / "libs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "broker.log"

    @property
    def properties_file(self) -> Path:
        return self.run_dir / "server.properties"


def ensure_jars(cfg: BrokerConfig, *, quiet: bool = True) -> Path:
    """Fetch the broker's jars with Maven once; later calls find them cached."""
    marker = cfg.libs_dir / ".complete"
    if marker.exists():
        return cfg.libs_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is needed once to fetch the Kafka jars; install it (apt-get install maven)")
    cfg.libs_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={cfg.kafka_version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={cfg.libs_dir}",
    ]
    if quiet:
        cmd.insert(1, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerError(f"fetching Kafka jars failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    if not any(cfg.libs_dir.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {cfg.libs_dir}")
    marker.write_text(cfg.kafka_version)
    return cfg.libs_dir


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java:
        raise BrokerError("Java 17+ is needed to run the Kafka broker (apt-get install openjdk-17-jre-headless)")
    return java


def _sasl_properties(cfg: BrokerConfig) -> list[str]:
    if cfg.sasl_port is None:
        return []
    users = " ".join(f'user_{name}="{password}"' for name, password in cfg.sasl_users)
    return [
        "sasl.enabled.mechanisms=PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config="
        f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
    ]


def _properties(cfg: BrokerConfig) -> str:
    listeners = [f"PLAINTEXT://{cfg.host}:{cfg.port}"]
    if cfg.sasl_port is not None:
        listeners.append(f"SASL_PLAINTEXT://{cfg.host}:{cfg.sasl_port}")
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={cfg.host}:{cfg.controller_port}",
            f"listeners={','.join(listeners)},CONTROLLER://{cfg.host}:{cfg.controller_port}",
            f"advertised.listeners={','.join(listeners)}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            *_sasl_properties(cfg),
            f"log.dirs={cfg.data_dir}",
            "num.partitions=4",
            # A single broker: internal topics cannot ask for more replicas than there are brokers.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",  # as in docker-compose.yml: every topic is created on purpose
            "message.max.bytes=8388608",
            "replica.fetch.max.bytes=8388608",
            "log.retention.hours=168",
            "log.segment.bytes=268435456",
            "",
        ]
    )


def _cp(cfg: BrokerConfig) -> str:
    return str(cfg.libs_dir / "*")


def read_pid(cfg: BrokerConfig) -> int | None:
    """The pid this module recorded for the broker, if that process still lives."""
    try:
        pid = int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    if _is_zombie(pid):
        # it exited and this process (its parent) has not reaped it yet: reap it, and it is gone
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    if not _is_this_broker(pid, cfg):
        return None  # a stale pid file whose pid now belongs to another process: never ours to stop
    return pid


def _is_this_broker(pid: int, cfg: BrokerConfig) -> bool:
    """Whether ``pid`` runs Kafka on this config's properties file (True where /proc cannot tell)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    args = [a.decode(errors="replace") for a in cmdline]
    return "kafka.Kafka" in args and str(cfg.properties_file) in args


def _is_zombie(pid: int) -> bool:
    """True for an exited process not yet reaped (``kill(pid, 0)`` still succeeds on one)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def answers_metadata(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000)})
        md = admin.list_topics(timeout=timeout)
        return bool(md.brokers)
    except Exception:  # noqa: BLE001 - any client failure means "not ready yet"
        return False


def _format_storage(cfg: BrokerConfig) -> None:
    if (cfg.data_dir / "meta.properties").exists():
        return
    java = _java()
    cluster_id = (
        subprocess.run(
            [java, "-cp", _cp(cfg), "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    proc = subprocess.run(
        [
            java,
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            _cp(cfg),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id,
            "-c",
            str(cfg.properties_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BrokerError(f"formatting {cfg.data_dir} failed: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")


def start(cfg: BrokerConfig, *, wait_s: float = 90.0) -> int:
    """Start the broker unless it already runs; return its pid once it answers metadata."""
    pid = read_pid(cfg)
    if pid is not None and answers_metadata(cfg.bootstrap):
        return pid
    if pid is None and port_open(cfg.host, cfg.port):
        raise BrokerError(f"port {cfg.port} is taken by a process aifleet did not start; choose another")
    ensure_jars(cfg)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.properties_file.write_text(_properties(cfg))
    _format_storage(cfg)
    if pid is None:
        log = cfg.log_file.open("ab")
        proc = subprocess.Popen(
            [
                _java(),
                f"-Xms{min(256, cfg.heap_mb)}m",
                f"-Xmx{cfg.heap_mb}m",
                "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={LOG4J}",
                "-Djava.awt.headless=true",
                "-cp",
                _cp(cfg),
                "kafka.Kafka",
                str(cfg.properties_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        pid = proc.pid
        cfg.pid_file.write_text(str(pid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if read_pid(cfg) is None:
            raise BrokerError(f"the broker exited during start-up; see {cfg.log_file}:\n{_tail(cfg.log_file)}")
        if port_open(cfg.host, cfg.port) and answers_metadata(cfg.bootstrap):
            return pid
        time.sleep(0.3)
    raise BrokerError(f"the broker did not answer within {wait_s:.0f}s; see {cfg.log_file}")


def stop(cfg: BrokerConfig, *, wait_s: float = 30.0) -> bool:
    """Stop the broker this module started (by its recorded pid). False when none was running."""
    pid = read_pid(cfg)
    if pid is None:
        cfg.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if read_pid(cfg) is None:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    cfg.pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def status(cfg: BrokerConfig) -> dict[str, object]:
    """What a user wants to know: running?, pid, bootstrap, answering?, where the log is."""
    pid = read_pid(cfg)
    return {
        "running": pid is not None,
        "pid": pid,
        "bootstrap": cfg.bootstrap,
        "answering": pid is not None and answers_metadata(cfg.bootstrap, timeout=2.0),
        "data_dir": str(cfg.data_dir),
        "log_file": str(cfg.log_file),
    }


def from_settings(settings: object) -> BrokerConfig:
    """The broker config a Settings object describes."""
    from streams.settings import Settings

    assert isinstance(settings, Settings)
    return BrokerConfig(
        port=settings.kafka.port,
        controller_port=settings.kafka.controller_port,
        data_dir=settings.broker_data_dir,
        cache_dir=settings.home / "cache",
        kafka_version=settings.kafka.kafka_version,
        heap_mb=settings.kafka.heap_mb,
    )
