"""Start and stop a whole local deployment: broker, emulator and workers, as child processes.

``aifleet up`` and ``aifleet bench`` use this. Only what this module started is stopped, by the
pids it recorded, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console

from infra.kafka import broker
from streams.admin import ensure_topics, wait_for_group
from streams.errors import AifleetError
from streams.kafka_auth import librdkafka_config
from streams.settings import Settings
from streams.topics import Topics


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class Stack:
    """A local deployment. ``start()`` brings up what is missing; ``stop()`` ends what it started."""

    settings: Settings
    workers: int = 1
    analytics: bool = True
    emulator_latency_ms: float = 0.0
    stop_broker: bool = True
    log_dir: Path | None = None
    children: list[_Child] = field(default_factory=list)
    started_broker: bool = False
    bootstrap: str = ""
    emulator_url: str | None = None
    config_file: Path | None = None

    @property
    def logs(self) -> Path:
        return self.log_dir or self.settings.home / "logs"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> _Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        child = _Child(name, proc, log)
        self.children.append(child)
        return child

    def child_env(self) -> dict[str, str]:
        env = {**os.environ, "AIFLEET_KAFKA_BOOTSTRAP": self.bootstrap, "PYTHONUNBUFFERED": "1"}
        if self.emulator_url:
            env["AIFLEET_PROVIDER_BASE_URL"] = self.emulator_url
        if self.config_file:
            env["AIFLEET_CONFIG_FILE"] = str(self.config_file)
        return env

    @contextlib.contextmanager
    def running(
        self, console: Console | None = None, starting: str = "starting...", stopping: str | None = None
    ) -> Iterator[Stack]:
        """Start everything and wait until it is ready (under a spinner when ``console`` is given); stop
        everything this stack started on the way out, whatever happened (with ``stopping``: under that
        spinner, then saying "stopped")."""
        try:
            with console.status(starting) if console is not None else contextlib.nullcontext():
                self.start()
                self.wait_ready()
            yield self
        finally:
            if console is not None and stopping is not None:
                with console.status(stopping):
                    self.stop()
                console.print("stopped")
            else:
                self.stop()

    def start(self) -> None:
        s = self.settings
        if s.bootstrap:
            self.bootstrap = s.bootstrap
        else:
            cfg = broker.from_settings(s)
            self.started_broker = broker.read_pid(cfg) is None
            broker.start(cfg)
            self.bootstrap = cfg.bootstrap
        ensure_topics(
            self.bootstrap,
            Topics.from_settings(s).all(),
            partitions=s.kafka.partitions,
            replication_factor=s.kafka.replication_factor,
            client_config=librdkafka_config(s),
        )
        if s.provider_base_url:
            self.emulator_url = s.provider_base_url
        elif not s.has_provider_keys():
            self.emulator_url = f"http://{s.emulator.host}:{s.emulator.port}"
            self._spawn(
                "emulator",
                [
                    sys.executable,
                    "-m",
                    "streams.cli",
                    "emulator",
                    "--host",
                    s.emulator.host,
                    "--port",
                    str(s.emulator.port),
                    "--latency-ms",
                    str(self.emulator_latency_ms),
                ],
                self.child_env(),
            )
            self._wait_http(f"{self.emulator_url}/healthz")
        if self.analytics:
            self.add_analytics()
        for i in range(self.workers):
            self.add_worker(i)

    def add_worker(self, index: int) -> _Child:
        env = {**self.child_env(), "AIFLEET_WORKER_ID": f"worker-{index}"}
        if self.settings.metrics_port is not None:  # one /metrics port per process on this host
            env["AIFLEET_METRICS_PORT"] = str(self.settings.metrics_port + 1 + index)
        return self._spawn(f"worker-{index}", [sys.executable, "-m", "streams.worker"], env)

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Send probe requests until the pipeline answers one; fail fast if a child dies meanwhile."""
        import asyncio

        from streams.client import AifleetClient, ClientDeliveryError, ClientTimeout

        async def go() -> float:
            t0 = time.monotonic()
            s = self.settings
            async with AifleetClient.from_settings(s, self.bootstrap) as client:
                while time.monotonic() - t0 < timeout_s:
                    self.check_alive()
                    try:
                        await client.ask("warm-up", tenant="aifleet-warmup", timeout=5.0)
                        return time.monotonic() - t0
                    except (ClientTimeout, ClientDeliveryError):  # never answered, or never produced
                        continue
            raise AifleetError(f"the pipeline did not answer within {timeout_s:.0f}s; see {self.logs}")

        # a thread of its own, so callers inside a running event loop (tests, notebooks) can use it too
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, go()).result()

    def add_analytics(self) -> _Child:
        return self._spawn("analytics", [sys.executable, "-m", "streams.worker", "analytics"], self.child_env())

    def terminate(self, child: _Child, timeout_s: float = 20.0) -> int:
        """Stop one child cleanly (SIGTERM, then SIGKILL) and forget it; returns its exit code."""
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
        try:
            code = child.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            code = child.proc.wait(5)
        child.log.close()
        self.children.remove(child)
        return code

    def wait_group(self, members: int, timeout_s: float = 120.0) -> float:
        """Wait until the pipeline's consumer group is stable with ``members`` workers (after adding some)."""
        group = self.settings.pipeline_group
        waited = wait_for_group(
            self.bootstrap,
            group,
            members,
            timeout_s=timeout_s,
            poll_s=0.5,
            check=self.check_alive,
            client_config=librdkafka_config(self.settings),
        )
        if waited is None:
            raise AifleetError(f"consumer group {group} did not settle with {members} members in {timeout_s:.0f}s")
        return waited

    def broker_pid(self) -> int | None:
        """The embedded broker's pid when this stack started it (None for an external cluster)."""
        if not self.started_broker:
            return None
        return broker.read_pid(broker.from_settings(self.settings))

    def worker_children(self) -> list[_Child]:
        return [c for c in self.children if c.name.startswith("worker-")]

    def _wait_http(self, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AifleetError(f"{url} did not come up within {timeout_s:.0f}s; see {self.logs}")

    def check_alive(self, *, ignore: set[int] | None = None) -> None:
        """Raise when a child died on its own (its log says why)."""
        for c in self.children:
            if ignore and c.proc.pid in ignore:
                continue
            code = c.proc.poll()
            if code is not None:
                raise AifleetError(f"{c.name} exited with code {code}; see {self.logs / (c.name + '.log')}")

    def stop(self, timeout_s: float = 20.0) -> None:
        for c in reversed(self.children):
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for c in reversed(self.children):
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)
            c.log.close()
        self.children.clear()
        if self.started_broker and self.stop_broker:
            broker.stop(broker.from_settings(self.settings))
            self.started_broker = False
