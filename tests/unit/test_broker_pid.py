"""The embedded broker's pid file: a pid that now belongs to another process is never taken for the broker
(so `aifleet broker stop` cannot kill it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infra.kafka import broker


def config(tmp_path: Path) -> broker.BrokerConfig:
    return broker.BrokerConfig(port=1, controller_port=2, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")


def test_a_stale_pid_file_naming_another_process_is_not_the_broker(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cfg.pid_file.write_text(str(other.pid))
        assert broker.read_pid(cfg) is None
        broker.stop(cfg)
        assert other.poll() is None  # still running: nothing of ours was stopped
    finally:
        other.kill()
        other.wait()


def test_a_process_running_kafka_on_this_config_is_the_broker(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.run_dir.mkdir(parents=True)
    # stands in for `java ... kafka.Kafka <properties>`: the same two arguments on its command line
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", str(cfg.properties_file)]
    )
    try:
        cfg.pid_file.write_text(str(fake.pid))
        assert broker.read_pid(cfg) == fake.pid
    finally:
        fake.kill()
        fake.wait()
