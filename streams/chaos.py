"""``aifleet chaos``: the fault suite. Real processes on loopback, one fault per scenario, bounded in time.

The suite starts a broker of its own (it restarts it in one scenario, so it never touches one it did not
start) and, per scenario, a fresh deployment on it: its own topic prefix, emulator, workers and (where
needed) analytics process with its own chDB store. Each scenario drives requests through the pipeline
with ``AifleetClient``, injects its fault mid-run, and returns a ``ChaosResult``:

- ``kill_worker``: SIGKILL one of the workers when half the requests were answered. Recovery: from the
  kill until every request that was unanswered at the kill has its answer (failure detection, rebalance,
  replay of the dead worker's uncommitted records).
- ``broker_restart``: stop the broker (``infra.kafka.broker.stop``: SIGTERM, controlled shutdown) at
  half-way and start it again on the same data directory and port; clients and workers must reconnect
  by themselves. Recovery: from the broker answering again to the first answer.
- ``clickhouse_away``: SIGSTOP the analytics process (it owns the embedded chDB store, so the store, the
  usage sink and the report endpoint all stop answering) for ``clickhouse_pause_s``, then SIGCONT.
  Recovery: from SIGCONT until the cost report counts every usage event that was produced.
- ``provider_away``: the primary provider fails every call (HTTP 503, or hangs past the read timeout with
  ``provider_mode="timeouts"``) from a quarter to three quarters of the run. Recovery: from the fault to
  the first answer served by the fallback provider.
- ``malformed_flood``: records generated with hypothesis (random bytes, broken JSON, schema-violating
  JSON, oversize, tombstones) interleaved with valid requests. Recovery: from the last malformed record
  produced until the dead-letter topic holds every one of them with the expected reason.

Every result counts what the client saw (sent, answered, ok, errors, lost, raw duplicate responses,
requests answered with two different outcomes) and what the emulator saw (successful provider calls
beyond one per answered request).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2
from pydantic import BaseModel, Field, computed_field

from infra.kafka import broker
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.request import Message, Request
from schemas.response import Response
from streams.admin import wait_for_group
from streams.bench import Percentiles, emulator_reset, emulator_stats
from streams.client import AifleetClient, ClientDeliveryError, ClientTimeout
from streams.errors import AifleetError, BrokerError, InvalidRecord
from streams.settings import DEFAULT_HOME, KafkaSettings, Settings, patched_environ
from streams.stack import Stack
from streams.topics import Topics

ScenarioName = Literal["kill_worker", "broker_restart", "clickhouse_away", "provider_away", "malformed_flood"]
SCENARIOS: tuple[ScenarioName, ...] = (
    "kill_worker",
    "broker_restart",
    "clickhouse_away",
    "provider_away",
    "malformed_flood",
)
PRIMARY = "openai"
FALLBACK = "azure"
TENANTS_PER_PARTITION = 2


class ChaosOptions(BaseModel):
    """How big and how long: every wait of the suite is bounded by one of these."""

    requests: int = Field(default=10_000, ge=10, description="Valid requests per scenario.")
    concurrency: int = Field(default=100, ge=1, description="Requests outstanding at once.")
    workers: int = Field(default=2, ge=1, description="Worker processes per scenario (kill_worker needs 2+).")
    latency_ms: float = Field(default=20.0, ge=0, description="Emulated provider latency per call.")
    scenarios: list[ScenarioName] = Field(default_factory=lambda: list(SCENARIOS))
    clickhouse_pause_s: float = Field(default=30.0, ge=0, description="How long the analytics process is stopped.")
    provider_mode: Literal["errors", "timeouts"] = "errors"
    malformed: int | None = Field(default=None, ge=0, description="Malformed records (default: requests / 4).")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Longest a client waits for one answer.")
    scenario_timeout_s: float = Field(default=420.0, gt=0, description="Bound on one scenario, start to stop.")
    catch_up_timeout_s: float = Field(default=180.0, gt=0, description="Bound on waiting for the DLQ or report.")
    breaker_recovery_s: float = Field(default=5.0, gt=0, description="Breakers probe a provider again after this.")
    settle_s: float = Field(default=3.0, ge=0, description="Wait for late duplicates after the last answer.")
    seed: int = 0


class ChaosResult(BaseModel):
    """What one scenario measured."""

    scenario: ScenarioName
    sent: int = 0
    answered: int = 0
    ok: int = 0
    errors: int = 0
    lost: int = 0
    send_failures: int = 0
    duplicate_responses: int = Field(default=0, description="Responses beyond one per request, before client dedup.")
    conflicting_responses: int = Field(default=0, description="Requests answered with two different statuses.")
    duplicate_provider_calls: int = Field(
        default=0, description="Successful provider calls beyond one per answered request (emulator's count)."
    )
    recovery_s: float | None = None
    recovery: str = Field(default="", description="What recovery_s measures in this scenario.")
    elapsed_s: float = 0.0
    latency_ms: Percentiles = Field(default_factory=lambda: Percentiles.of([]))
    error_reasons: dict[str, int] = Field(default_factory=dict)
    checks: dict[str, bool] = Field(default_factory=dict)
    measurements: dict[str, float | int | str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def every_request_one_terminal(self) -> bool:
        """Each request sent got exactly one terminal outcome as the client sees it (none lost, none failed
        to send, none answered both ok and error)."""
        return (
            self.send_failures == 0
            and self.lost == 0
            and self.answered == self.sent
            and self.conflicting_responses == 0
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        """One terminal response per request, the scenario's own checks held, and recovery was measured."""
        return self.every_request_one_terminal and self.recovery_s is not None and all(self.checks.values())


class ChaosReport(BaseModel):
    """The suite's results, in the order the scenarios ran."""

    options: ChaosOptions
    results: list[ChaosResult]
    elapsed_s: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)


# -- the deployment ------------------------------------------------------------------------------


def chaos_tenants(partitions: int, per_partition: int = TENANTS_PER_PARTITION) -> list[str]:
    """Tenant names that spread over every requests partition (requests are keyed by tenant)."""
    taken: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per_partition for v in taken.values()):
        name = f"chaos-{i}"
        p = (murmur2(name.encode()) & 0x7FFFFFFF) % partitions
        if len(taken[p]) < per_partition:
            taken[p].append(name)
        i += 1
    return [t for p in range(partitions) for t in taken[p]]


def catalog_toml(tenants: list[str]) -> str:
    """The suite's catalog: an OpenAI-format primary and an Azure fallback, both emulated, no real limits."""

    def provider(name: str, adapter: str, role: str, base_url: str, path: str, extra: str = "") -> str:
        return f"""
[providers.{name}]
adapter = "{adapter}"
base_url = "{base_url}"
emulator_path = "{path}"
key = "{"azure_openai" if adapter == "azure" else "openai"}"
role = "{role}"
region = "us"
rpm = 10000000
tpm = 10000000000
burst = 100000
timeouts = {{ connect_s = 2.0, read_s = 5.0, total_s = 10.0 }}
{extra}
[[providers.{name}.models]]
name = "gpt-4o-mini"
input_per_mtok = 0.15
output_per_mtok = 0.60
quality = 0.70
capabilities = ["chat", "streaming"]
context_window = 128000
"""

    parts = [
        "# Written by `aifleet chaos`: the fault suite's catalog.",
        'prices_read = "2025-06-01"',
        provider(PRIMARY, "openai", "primary", "https://api.openai.com/v1", "/v1"),
        provider(
            FALLBACK,
            "azure",
            "secondary",
            "https://example.openai.azure.com",
            "",
            'api_version = "2024-10-21"\n',
        ),
        '[tiers.enterprise]\nquality_floor = 0.5\nproviders = ["*"]\n',
    ]
    parts += [f'[tenants.{t}]\ntier = "enterprise"\n' for t in tenants]
    return "\n".join(parts)


def jar_cache(settings: Settings) -> Path:
    """The Kafka jar cache: this home's, else the default home's (fetched once per machine), else this home's."""
    version = settings.kafka.kafka_version
    for home in (settings.home, DEFAULT_HOME):
        if (home / "cache" / f"kafka-{version}" / "libs" / ".complete").exists():
            return home / "cache"
    return settings.home / "cache"


def chaos_broker(settings: Settings, root: Path) -> broker.BrokerConfig:
    """A broker of the suite's own, on the configured port, with a fresh data directory under ``root``."""
    k = settings.kafka
    defaults = KafkaSettings()
    controller = k.controller_port
    if k.port != defaults.port and controller == defaults.controller_port:
        controller = k.port + 1  # only the client port was chosen: keep the controller beside it
    return broker.BrokerConfig(
        port=k.port,
        controller_port=controller,
        data_dir=root / "kafka",
        cache_dir=jar_cache(settings),
        kafka_version=k.kafka_version,
        heap_mb=k.heap_mb,
    )


@dataclass
class BrokerStart:
    """How a (re)start of the suite's broker went."""

    attempts: int = 1
    failures: list[str] = field(default_factory=list)


_reapers: dict[int, threading.Thread] = {}


def _recorded_pid(cfg: broker.BrokerConfig) -> int | None:
    try:
        return int(cfg.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _reap_when_it_exits(pid: int) -> None:
    """Wait for our child broker in a thread, so its exit is seen at once.

    ``broker.read_pid`` asks ``kill(pid, 0)``, which a zombie passes: in a long-lived parent an exited
    broker would look alive, ``broker.stop`` would wait out its whole timeout, and a broker that died
    during start-up would be waited for in vain.
    """

    def wait() -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    if pid not in _reapers:
        _reapers[pid] = threading.Thread(target=wait, name=f"reap-broker-{pid}", daemon=True)
        _reapers[pid].start()


def _why(outcome: BrokerStart, exc: BaseException) -> str:
    return "; ".join(dict.fromkeys(outcome.failures)) or str(exc).splitlines()[0]


def start_broker(cfg: broker.BrokerConfig, *, timeout_s: float = 120.0, attempts: int = 5) -> BrokerStart:
    """``broker.start``, started again when the broker exits during start-up (a failure is recorded with
    its cause; the usual one on loopback is the port taken at bind time, see ``docs/operations.md``)."""
    outcome = BrokerStart()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            broker.start(cfg, wait_s=2.0)
        except BrokerError as exc:
            pid = _recorded_pid(cfg)
            if pid is not None:
                _reap_when_it_exits(pid)
            if time.monotonic() > deadline:
                raise BrokerError(f"the broker did not start within {timeout_s:.0f}s: {_why(outcome, exc)}") from exc
            time.sleep(0.2)
            if broker.read_pid(cfg) is not None:
                continue  # alive and still starting: wait on
            log = cfg.log_file.read_bytes()[-20_000:].decode("utf-8", "replace") if cfg.log_file.exists() else ""
            why = "port in use at bind time" if "Address already in use" in log else str(exc).splitlines()[0]
            outcome.failures.append(why)
            cfg.pid_file.unlink(missing_ok=True)
            if outcome.attempts >= attempts:
                raise BrokerError(f"the broker exited during start-up {attempts} times: {_why(outcome, exc)}") from exc
            outcome.attempts += 1
            time.sleep(1.0)
        else:
            pid = _recorded_pid(cfg)
            if pid is not None:
                _reap_when_it_exits(pid)
            return outcome


@dataclass
class Deployment:
    """One scenario's deployment on the suite's broker."""

    stack: Stack
    settings: Settings
    broker: broker.BrokerConfig
    tenants: list[str]
    options: ChaosOptions
    run_id: str
    traffic: Traffic | None = None

    def start_traffic(self, client: AifleetClient) -> Traffic:
        """The scenario's traffic (kept here, so a scenario cut short still reports what it saw)."""
        self.traffic = Traffic(client, self.run_id, self.tenants, self.options.request_timeout_s)
        return self.traffic

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def topics(self) -> Topics:
        return Topics.from_settings(self.settings)

    @property
    def emulator(self) -> str:
        assert self.stack.emulator_url
        return self.stack.emulator_url

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[AifleetClient]:
        """A started client, stopped afterwards within a bound. With its broker gone, stopping an aiokafka
        consumer can take long or end in a stray CancelledError; neither may cost the scenario its result."""
        s = self.settings
        client = AifleetClient.from_settings(s, self.bootstrap)
        await client.start()
        try:
            yield client
        finally:
            stopping = asyncio.create_task(client.stop())
            await asyncio.wait({stopping}, timeout=30.0)
            if stopping.done() and not stopping.cancelled():
                stopping.exception()  # retrieved: a failed stop is not the scenario's failure
            else:
                stopping.cancel()

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The process of one of the stack's children (``analytics``, ``worker-0``, ...)."""
        return next(c.proc for c in self.stack.children if c.name == name)

    async def set_profile(self, provider: str, **profile: object) -> None:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            r = await http.post(f"{self.emulator}/_emulator/profile/{provider}", json=profile)
            r.raise_for_status()


# -- traffic ---------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Valid requests through one client, with the time each was sent and answered (monotonic seconds)."""

    client: AifleetClient
    run_id: str
    tenants: list[str]
    timeout_s: float
    sent_at: dict[str, float] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)
    responses: dict[str, Response] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    send_failures: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    _next: int = 0
    _marks: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    def build(self, i: int, tag: str) -> Request:
        return Request(
            request_id=f"{tag}-{self.run_id}-{i}",
            tenant=self.tenants[i % len(self.tenants)],
            messages=[Message(role="user", content=f"chaos {self.run_id} {tag} question number {i}")],
        )

    def after_answers(self, n: int) -> asyncio.Event:
        """An event set once ``n`` requests have been answered."""
        event = asyncio.Event()
        if len(self.answered_at) >= n:
            event.set()
        else:
            self._marks.append((n, event))
        return event

    async def one(self, request: Request) -> None:
        rid = request.request_id
        self.sent_at[rid] = time.monotonic()
        try:
            response = await self.client.request(request, timeout=self.timeout_s)
        except (ClientTimeout, ClientDeliveryError):  # never answered, or never produced
            self.lost.append(rid)
            return
        except Exception as exc:  # noqa: BLE001 - a producer error is the client's to see; count it
            self.send_failures[rid] = f"{type(exc).__name__}: {exc}"
            return
        self.answered_at[rid] = time.monotonic()
        self.responses[rid] = response
        answered = len(self.answered_at)
        for n, event in self._marks:
            if answered >= n:
                event.set()

    async def run(self, n: int, concurrency: int, *, tag: str = "req") -> None:
        """Send ``n`` requests with at most ``concurrency`` outstanding; return when each ended."""
        slots = asyncio.Semaphore(concurrency)
        first = self._next
        self._next += n
        if not self.started:
            self.started = time.monotonic()

        async def slot(i: int) -> None:
            async with slots:
                await self.one(self.build(i, tag))

        await asyncio.gather(*(slot(i) for i in range(first, first + n)))

    # -- what the client saw -----------------------------------------------------------------------
    def outstanding_at(self, t: float) -> list[str]:
        """Requests sent by ``t`` and not answered by then."""
        return [rid for rid, s in self.sent_at.items() if s <= t and self.answered_at.get(rid, float("inf")) > t]

    def first_answer_after(self, t: float, accept: Callable[[Response], bool] = lambda _r: True) -> float | None:
        times = [a for rid, a in self.answered_at.items() if a >= t and accept(self.responses[rid])]
        return min(times) if times else None

    def longest_gap(self, since: float) -> float:
        """The longest time without any answer, from ``since`` to the last answer."""
        times = sorted(a for a in self.answered_at.values() if a >= since)
        gaps = [b - a for a, b in zip([since, *times], times, strict=False)]
        return max(gaps, default=0.0)

    def result(self, scenario: ScenarioName) -> ChaosResult:
        ok = sum(1 for r in self.responses.values() if r.status in ("ok", "cached"))
        reasons: Counter[str] = Counter(r.error.reason.value for r in self.responses.values() if r.error)
        latencies = [(self.answered_at[rid] - self.sent_at[rid]) * 1000 for rid in self.answered_at]
        last = max(self.answered_at.values(), default=self.started)
        return ChaosResult(
            scenario=scenario,
            sent=len(self.sent_at),
            answered=len(self.responses),
            ok=ok,
            errors=len(self.responses) - ok,
            lost=len(self.sent_at) - len(self.responses) - len(self.send_failures),
            send_failures=len(self.send_failures),
            duplicate_responses=self.client.duplicates,
            elapsed_s=round(max(0.0, last - self.started), 3),
            latency_ms=Percentiles.of(latencies),
            error_reasons=dict(reasons),
            measurements={"throughput_rps": round(len(self.responses) / max(1e-9, last - self.started), 1)},
        )


# -- reading topics back ---------------------------------------------------------------------------


class TopicTail:
    """Reads one topic from its beginning, and later whatever arrived since, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.values: list[bytes | None] = []

    async def __aenter__(self) -> TopicTail:
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read_available(self, timeout_s: float = 30.0) -> list[bytes | None]:
        """Everything up to the current end offsets; returns what was new."""
        end = await self._consumer.end_offsets(self._tps)
        new: list[bytes | None] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = {tp: await self._consumer.position(tp) for tp in self._tps}
            if all(positions[tp] >= end[tp] for tp in self._tps):
                break
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                new.extend(r.value for r in records)
        self.values.extend(new)
        return new


async def response_counts(d: Deployment, ours: dict[str, float]) -> tuple[Counter[str], dict[str, set[str]]]:
    """Responses on the responses topic per request id of ours (raw: before any client dedup)."""
    counts: Counter[str] = Counter()
    statuses: dict[str, set[str]] = {}
    async with TopicTail(d.bootstrap, d.topics.responses, d.settings.kafka.partitions) as tail:
        for raw in await tail.read_available(timeout_s=60):
            try:
                r = Response.from_json(raw or b"")
            except ValueError:
                continue
            if r.request_id in ours:
                counts[r.request_id] += 1
                statuses.setdefault(r.request_id, set()).add("error" if r.status == "error" else "ok")
    return counts, statuses


def duplicate_provider_calls(ok_calls_by_request: dict[str, int], answered_ok: set[str]) -> int:
    """Successful provider answers beyond what the requests needed: every one after a request's first, and
    every one to a request that was not answered ok. A failed call retried after a fault was needed."""
    repeats = sum(max(0, n - 1) for n in ok_calls_by_request.values())
    wasted = sum(n for rid, n in ok_calls_by_request.items() if rid not in answered_ok)
    return repeats + wasted


async def finish(
    d: Deployment, traffic: Traffic, result: ChaosResult, *, ignore: set[int] | None = None
) -> Counter[str]:
    """Fill in what every scenario reports: raw duplicates, conflicting answers, provider calls, liveness.
    Returns the raw number of responses per request."""
    await asyncio.sleep(d.options.settle_s)  # late duplicates would arrive now
    result.duplicate_responses = traffic.client.duplicates
    try:
        counts, statuses = await asyncio.wait_for(response_counts(d, traffic.sent_at), 90)
    except Exception as exc:  # noqa: BLE001 - e.g. the broker is gone: report what the client saw
        counts, statuses = Counter(), {}
        result.notes.append(f"could not read the responses topic back: {type(exc).__name__}")
    ours = list(counts)
    result.measurements["raw_responses"] = sum(counts[rid] for rid in ours)
    result.measurements["raw_duplicate_responses"] = sum(counts[rid] - 1 for rid in ours if counts[rid] > 1)
    result.conflicting_responses = sum(1 for rid in ours if len(statuses[rid]) > 1)
    stats = emulator_stats(d.emulator) or {}
    ok_calls: dict[str, int] = {k: v for k, v in stats.get("ok_calls_by_request", {}).items() if k in traffic.sent_at}
    answered_ok = {rid for rid, r in traffic.responses.items() if r.status in ("ok", "cached")}
    result.duplicate_provider_calls = duplicate_provider_calls(ok_calls, answered_ok)
    # a response on the topic twice although the provider answered once: a producer retry, not a replay
    result.measurements["duplicates_without_second_call"] = sum(
        counts[rid] - 1 for rid in ours if counts[rid] > 1 and ok_calls.get(rid, 0) <= 1
    )
    result.measurements["provider_calls"] = sum(
        v for k, v in stats.get("calls_by_request", {}).items() if k in traffic.sent_at
    )
    try:
        d.stack.check_alive(ignore=ignore)
        result.checks["processes_alive"] = True
    except AifleetError as exc:
        result.checks["processes_alive"] = False
        result.notes.append(str(exc))
    if traffic.send_failures:
        sample = next(iter(traffic.send_failures.values()))
        result.notes.append(f"{len(traffic.send_failures)} requests failed to send, e.g. {sample}")
    return counts


# -- scenarios -------------------------------------------------------------------------------------


async def kill_worker(d: Deployment) -> ChaosResult:
    """SIGKILL a worker half-way through the run; the survivor takes its partitions over."""
    n = d.options.requests
    workers = d.stack.worker_children()
    if len(workers) < 2:
        raise AifleetError("kill_worker needs at least two workers")
    victim = workers[0]
    async with d.client() as client:
        traffic = d.start_traffic(client)
        killed: list[float] = []

        async def fault() -> None:
            await traffic.after_answers(n // 2).wait()
            victim.proc.send_signal(signal.SIGKILL)  # no commit, no leave-group: the group finds out late
            killed.append(time.monotonic())

        task = asyncio.create_task(fault())
        await traffic.run(n, d.options.concurrency)
        task.cancel()
        result = traffic.result("kill_worker")
        result.recovery = "kill -> every request unanswered at the kill answered"
        if killed:
            t = killed[0]
            stalled = traffic.outstanding_at(t)
            last = max((traffic.answered_at[r] for r in stalled if r in traffic.answered_at), default=t)
            result.recovery_s = round(last - t, 3)
            result.measurements["outstanding_at_kill"] = len(stalled)
            result.measurements["longest_answer_gap_s"] = round(traffic.longest_gap(t), 3)
            result.measurements["answered_at_kill"] = sum(1 for a in traffic.answered_at.values() if a <= t)
        else:
            result.notes.append("the kill never happened (half the requests were never answered)")
        result.checks["victim_killed"] = bool(killed) and victim.proc.wait(10) == -signal.SIGKILL
        counts = await finish(d, traffic, result, ignore={victim.proc.pid})
        if killed:
            # replays: requests answered before the kill and answered again after it (the dead worker's
            # uncommitted offsets); how far back they reach says how far its commits lagged
            replayed = [
                killed[0] - traffic.answered_at[r] for r, c in counts.items() if c > 1 and r in traffic.answered_at
            ]
            replayed = [age for age in replayed if age >= 0]
            result.measurements["answered_before_kill_then_replayed"] = len(replayed)
            if replayed:
                result.measurements["oldest_replayed_answer_age_s"] = round(max(replayed), 3)
    return result


async def broker_restart(d: Deployment) -> ChaosResult:
    """Stop the broker half-way (controlled shutdown) and start it on the same data and port."""
    n = d.options.requests
    async with d.client() as client:
        traffic = d.start_traffic(client)
        marks: dict[str, float] = {}
        restart: list[BrokerStart] = []

        failed: list[str] = []

        async def fault() -> None:
            await traffic.after_answers(n // 2).wait()
            marks["stop"] = time.monotonic()
            await asyncio.to_thread(broker.stop, d.broker)
            marks["down"] = time.monotonic()
            try:
                started = await asyncio.to_thread(start_broker, d.broker)
            except BrokerError as exc:  # the run goes on and reports what the clients saw
                failed.append(f"the broker did not come back: {str(exc).splitlines()[0]}")
                return
            marks["up"] = time.monotonic()
            restart.append(started)

        task = asyncio.create_task(fault())
        load = asyncio.create_task(traffic.run(n, d.options.concurrency))
        await asyncio.wait({task, load}, return_when=asyncio.FIRST_COMPLETED)
        if failed:  # the broker is not coming back: what is unanswered now stays so
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        else:
            await load
            if "stop" in marks:
                await task  # the broker must be back before anything else happens
            else:
                task.cancel()
        result = traffic.result("broker_restart")
        result.recovery = "broker answering again -> first answer"
        if "up" in marks:
            up = marks["up"]
            first = traffic.first_answer_after(up)
            result.recovery_s = round(first - up, 3) if first is not None else None
            stalled = traffic.outstanding_at(marks["stop"])
            last = max((traffic.answered_at[r] for r in stalled if r in traffic.answered_at), default=up)
            result.measurements["stop_to_down_s"] = round(marks["down"] - marks["stop"], 3)
            result.measurements["broker_down_s"] = round(up - marks["down"], 3)
            result.measurements["outstanding_at_stop"] = len(stalled)
            result.measurements["up_to_all_stalled_answered_s"] = round(last - up, 3)
            result.measurements["longest_answer_gap_s"] = round(traffic.longest_gap(marks["stop"]), 3)
            result.measurements["answered_while_stopping"] = sum(
                1 for a in traffic.answered_at.values() if marks["stop"] <= a < marks["down"]
            )
        elif "stop" not in marks:
            result.notes.append("the restart never happened")
        result.notes.extend(failed)
        for started in restart:
            result.measurements["broker_start_attempts"] = started.attempts
            for why in started.failures:
                result.notes.append(f"a broker start failed ({why}); started it again")
        hazard = self_connect_hazard(d.broker.port)
        if hazard and (failed or any(started.failures for started in restart)):
            result.notes.append(hazard)
        result.checks["broker_restarted"] = "up" in marks
        await finish(d, traffic, result)
    return result


def _report_count(settings: Settings, tenants: list[str]) -> tuple[int, float]:
    from streams.analytics.client import open_reader
    from streams.analytics.reports import report

    reader = open_reader(settings.clickhouse, home=settings.home)
    try:
        rep = report(reader, "cost", since="1d", by="tenant", tenants=tuple(tenants))
        return int(rep.total("requests")), float(rep.total("cost_usd"))
    finally:
        reader.close()


async def clickhouse_away(d: Deployment) -> ChaosResult:
    """Freeze the analytics process (it owns chDB) for a while; every usage event must land afterwards."""
    n = d.options.requests
    pid = d.process("analytics").pid
    marks: dict[str, float] = {}
    async with d.client() as client:
        traffic = d.start_traffic(client)

        async def fault() -> None:
            await traffic.after_answers(n // 2).wait()
            os.kill(pid, signal.SIGSTOP)
            marks["stop"] = time.monotonic()

        task = asyncio.create_task(fault())
        try:
            await traffic.run(n, d.options.concurrency)
            task.cancel()
            if "stop" in marks:
                await asyncio.sleep(max(0.0, marks["stop"] + d.options.clickhouse_pause_s - time.monotonic()))
        finally:
            if "stop" in marks:
                os.kill(pid, signal.SIGCONT)
                marks["cont"] = time.monotonic()
        result = traffic.result("clickhouse_away")
        result.recovery = "SIGCONT -> the cost report counts every usage event produced"
        await asyncio.sleep(1.0)  # the last usage records are produced with (not before) their responses
        produced: dict[str, float] = {}
        async with TopicTail(d.bootstrap, d.topics.usage, d.settings.kafka.partitions) as tail:
            for raw in await tail.read_available(timeout_s=60):
                try:
                    u = orjson.loads(raw or b"")
                except orjson.JSONDecodeError:
                    continue
                if isinstance(u, dict) and u.get("tenant") in d.tenants and u.get("status") != "rejected":
                    produced[u["event_id"]] = float(u.get("cost_usd") or 0.0)
        expected = len(produced)
        counted, cost = 0, 0.0
        deadline = time.monotonic() + d.options.catch_up_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the store may still be coming back
                counted, cost = await asyncio.to_thread(_report_count, d.settings, d.tenants)
            if counted >= expected:
                break
            await asyncio.sleep(0.5)
        caught_up = time.monotonic()
        if "cont" in marks and counted >= expected:
            result.recovery_s = round(caught_up - marks["cont"], 3)
        if "stop" in marks:
            result.measurements["paused_s"] = round(marks["cont"] - marks["stop"], 3)
            during = sum(1 for a in traffic.answered_at.values() if marks["stop"] <= a <= marks["cont"])
            result.measurements["answered_while_paused"] = during
        result.measurements["usage_events_produced"] = expected
        result.measurements["usage_events_in_report"] = counted
        result.measurements["cost_produced_usd"] = round(sum(produced.values()), 6)
        result.measurements["cost_in_report_usd"] = round(cost, 6)
        result.checks["store_paused"] = "stop" in marks
        result.checks["usage_all_landed"] = counted == expected and expected >= result.ok
        result.checks["cost_matches"] = abs(cost - sum(produced.values())) < 1e-6 * max(1, expected)
        await finish(d, traffic, result)
    return result


async def provider_away(d: Deployment) -> ChaosResult:
    """The primary fails every call for the middle half of the run; the fallback must serve."""
    n = d.options.requests
    latency = d.options.latency_ms
    marks: dict[str, float] = {}
    if d.options.provider_mode == "errors":
        away: dict[str, object] = {"down": True, "latency_ms": latency}
    else:
        away = {"hang_rate": 1.0, "hang_s": 60.0, "latency_ms": latency}
    async with d.client() as client:
        traffic = d.start_traffic(client)

        async def fault() -> None:
            await traffic.after_answers(n // 4).wait()
            await d.set_profile(PRIMARY, **away)
            marks["down"] = time.monotonic()
            await traffic.after_answers(3 * n // 4).wait()
            await d.set_profile(PRIMARY, latency_ms=latency)
            marks["back"] = time.monotonic()

        task = asyncio.create_task(fault())
        try:
            await traffic.run(n, d.options.concurrency)
        finally:
            if "back" not in marks:
                task.cancel()
                await d.set_profile(PRIMARY, latency_ms=latency)
                marks.setdefault("back", time.monotonic())

        def by(provider: str) -> Callable[[Response], bool]:
            return lambda r: r.status == "ok" and r.provider == provider

        # after the fault the breakers wait breaker_recovery_s before probing the primary: keep a trickle
        # of requests going until the primary serves again (bounded)
        probe_until = time.monotonic() + d.options.breaker_recovery_s + 30.0
        while traffic.first_answer_after(marks["back"], by(PRIMARY)) is None and time.monotonic() < probe_until:
            await traffic.run(10, 10, tag="probe")
            await asyncio.sleep(0.5)
        result = traffic.result("provider_away")
        result.recovery = f"primary {d.options.provider_mode} -> first answer served by the fallback"
        if "down" in marks:
            first = traffic.first_answer_after(marks["down"], by(FALLBACK))
            result.recovery_s = round(first - marks["down"], 3) if first is not None else None
            during = [rid for rid, a in traffic.answered_at.items() if marks["down"] <= a <= marks["back"]]
            result.measurements["answered_while_away"] = len(during)
            result.measurements["served_by_fallback"] = sum(1 for r in traffic.responses.values() if by(FALLBACK)(r))
            result.measurements["away_s"] = round(marks["back"] - marks["down"], 3)
            back = traffic.first_answer_after(marks["back"], by(PRIMARY))
            if back is not None:
                result.measurements["primary_serving_again_after_s"] = round(back - marks["back"], 3)
            result.checks["fallback_served"] = first is not None
            result.checks["primary_serves_again"] = back is not None
        await finish(d, traffic, result)
    return result


# -- malformed records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """One generated record and the dead-letter reason the gate must give it."""

    kind: str
    value: bytes | None
    key: bytes | None
    reason: DeadLetterReason

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.value or b"").hexdigest()


def expected_reason(value: bytes | None, topics: Topics, max_bytes: int) -> DeadLetterReason | None:
    """What the gate must do with ``value``: its dead-letter reason, or None for a valid request."""
    from streams.codec import decode_request

    try:
        request = decode_request(value, max_bytes=max_bytes)
    except InvalidRecord as exc:
        return exc.dlq_reason
    if request.reply_topic and not topics.reply_allowed(request.tenant, request.reply_topic):
        return DeadLetterReason.FORBIDDEN_REPLY_TOPIC
    return None


def generate_malformed(
    count: int, *, topics: Topics, tenants: list[str], max_bytes: int, seed: int = 0
) -> list[Malformed]:
    """``count`` malformed request records, drawn with hypothesis: random bytes, broken JSON,
    schema-violating JSON (arbitrary documents and valid requests with one field broken), oversize
    records and a few tombstones. Each is checked against the codec, so none is accidentally valid."""
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hypothesis_seed
        from hypothesis import strategies as st
    except ImportError as exc:  # a test dependency: pip install 'aifleet[test]'
        raise AifleetError("the malformed-record flood needs hypothesis (pip install 'aifleet[test]')") from exc

    def valid_doc(i: int) -> dict[str, Any]:
        return Request(
            request_id=f"bad-{i}",
            tenant=tenants[i % len(tenants)],
            messages=[Message(role="user", content=f"malformed {i}")],
        ).model_dump(mode="json", exclude_none=True)

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
    )
    json_values = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    )
    fields = ["request_id", "tenant", "kind", "messages", "deadline_ms", "max_tokens", "temperature", "stream"]
    fields += ["created_at", "schema_version", "reply_topic", "tier", "input", "metadata", "unknown_field"]

    def dumps(value: Any) -> bytes:  # the standard library writes what orjson cannot (integers past 64 bits)
        return json.dumps(value).encode()

    def broken(doc: dict[str, Any], field: str, value: Any) -> bytes:
        return dumps({**doc, field: value})

    def without(doc: dict[str, Any], field: str) -> bytes:
        return orjson.dumps({k: v for k, v in doc.items() if k != field})

    def truncated(doc: dict[str, Any], cut: int, junk: str) -> bytes:
        raw = orjson.dumps(doc)
        return raw[: cut % len(raw)] + junk.encode()

    def oversize(doc: dict[str, Any], extra: int) -> bytes:
        return orjson.dumps({**doc, "messages": [{"role": "user", "content": "x" * (max_bytes + extra)}]})

    ids = st.integers(min_value=0, max_value=10**9)
    others = [f"{topics.responses}.{t}-other" for t in tenants] + [f"{topics.prefix}.usage", "elsewhere"]
    reply_topics = st.sampled_from(others) | st.text(min_size=1, max_size=60)
    keys = st.none() | st.sampled_from([t.encode() for t in tenants]) | st.binary(max_size=16)
    categories: list[tuple[str, Any, int]] = []
    n_oversize = min(10, max(1, count // 200)) if count >= 10 else 0
    n_tombstones = min(5, max(1, count // 500)) if count >= 10 else 0
    rest = count - n_oversize - n_tombstones
    strategies = [
        ("random_bytes", st.binary(max_size=600)),
        ("broken_json", st.builds(lambda i, c, j: truncated(valid_doc(i), c, j), ids, ids, st.text(max_size=3))),
        ("arbitrary_json", json_values.map(dumps)),
        ("bad_field", st.builds(lambda i, f, v: broken(valid_doc(i), f, v), ids, st.sampled_from(fields), json_values)),
        ("missing_field", st.builds(lambda i, f: without(valid_doc(i), f), ids, st.sampled_from(fields[:4]))),
        ("foreign_reply_topic", st.builds(lambda i, t: broken(valid_doc(i), "reply_topic", t), ids, reply_topics)),
    ]
    for i, (kind, strategy) in enumerate(strategies):
        categories.append((kind, strategy, rest // len(strategies) + (1 if i < rest % len(strategies) else 0)))
    categories.append(
        ("oversize", st.builds(lambda i, e: oversize(valid_doc(i), e), ids, st.integers(1, 4096)), n_oversize)
    )

    def draw(kind: str, strategy: Any, wanted: int, draw_seed: int) -> list[Malformed]:
        """Up to ``wanted`` records from ``strategy`` that the gate must dead-letter."""
        got: list[Malformed] = []

        @hypothesis_seed(draw_seed)
        @settings(
            max_examples=max(1, wanted),
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )
        @given(value=strategy, key=keys)
        def collect(value: bytes, key: bytes | None) -> None:
            reason = expected_reason(value, topics, max_bytes)
            if reason is not None and len(got) < wanted:
                got.append(Malformed(kind, value, key, reason))

        collect()
        return got

    out: list[Malformed] = []
    for index, (kind, strategy, wanted) in enumerate(categories):
        got: list[Malformed] = []
        for attempt in range(20):  # hypothesis may stop short of max_examples: draw again until there are enough
            if len(got) >= wanted:
                break
            got += draw(kind, strategy, wanted - len(got), seed * 1000 + index * 50 + attempt)
        out.extend(got)
    out.extend(Malformed("tombstone", None, t.encode(), DeadLetterReason.INVALID_JSON) for t in tenants[:n_tombstones])
    rng = random.Random(seed)  # noqa: S311 - a reproducible order, not a secret
    rng.shuffle(out)
    return out


async def malformed_flood(d: Deployment) -> ChaosResult:
    """Malformed records interleaved with valid requests: valid ones answered, bad ones dead-lettered."""
    n = d.options.requests
    m = d.options.malformed if d.options.malformed is not None else n // 4
    generated_at = time.monotonic()
    bad = await asyncio.to_thread(
        generate_malformed,
        m,
        topics=d.topics,
        tenants=d.tenants,
        max_bytes=d.settings.worker.max_request_bytes,
        seed=d.options.seed,
    )
    generation_s = time.monotonic() - generated_at
    producer = AIOKafkaProducer(
        bootstrap_servers=d.bootstrap, acks="all", linger_ms=5, max_request_size=16 * 1024 * 1024
    )
    await producer.start()
    marks: dict[str, float] = {}
    try:
        async with d.client() as client:
            traffic = d.start_traffic(client)

            async def flood() -> None:
                pending = []
                for i, record in enumerate(bad):
                    # spread the flood over the run: record i goes out once i/len(bad) of the valid ones did
                    await traffic.after_answers(i * n // max(1, len(bad))).wait()
                    pending.append(await producer.send(d.topics.requests, record.value, key=record.key))
                await asyncio.gather(*pending)
                marks["flood_done"] = time.monotonic()

            task = asyncio.create_task(flood())
            await traffic.run(n, d.options.concurrency)
            await asyncio.wait_for(task, d.options.catch_up_timeout_s)
            result = traffic.result("malformed_flood")
            result.recovery = "last malformed record produced -> all of them in the DLQ with their reason"
            expected = Counter((b.sha256, b.reason.value) for b in bad)
            seen: Counter[tuple[str, str]] = Counter()
            async with TopicTail(d.bootstrap, d.topics.dlq, d.settings.kafka.partitions) as tail:
                deadline = time.monotonic() + d.options.catch_up_timeout_s
                while time.monotonic() < deadline:
                    for raw in await tail.read_available():
                        letter = DeadLetter.from_json(raw or b"")
                        seen[(letter.payload_sha256, letter.reason.value)] += 1
                    if all(seen[k] >= v for k, v in expected.items()):
                        break
                    await asyncio.sleep(0.25)
                complete = time.monotonic()
            missing = sum(max(0, v - seen[k]) for k, v in expected.items())
            if missing == 0:
                result.recovery_s = round(complete - marks["flood_done"], 3)
            kinds = Counter(b.kind for b in bad)
            result.measurements["malformed_sent"] = len(bad)
            result.measurements["malformed_by_kind"] = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            result.measurements["dead_lettered"] = sum(seen.values())
            result.measurements["malformed_missing_from_dlq"] = missing
            result.measurements["generation_s"] = round(generation_s, 3)
            wrong = {k for k in seen if k not in expected and any(k[0] == e[0] for e in expected)}
            if wrong:
                result.notes.append(f"{len(wrong)} malformed records were dead-lettered with an unexpected reason")
            if missing:
                sample = next(
                    (b for b in bad if seen[(b.sha256, b.reason.value)] < expected[(b.sha256, b.reason.value)]), None
                )
                if sample is not None:
                    shown = (
                        base64.b64encode((sample.value or b"")[:80]).decode() if sample.value else repr(sample.value)
                    )
                    result.notes.append(f"missing from the DLQ, e.g. a {sample.kind} record ({shown})")
            result.checks["all_malformed_dead_lettered"] = missing == 0
            result.checks["valid_all_ok"] = result.ok == n
            await finish(d, traffic, result)
    finally:
        await producer.stop()
    return result


ScenarioFn = Callable[[Deployment], Awaitable[ChaosResult]]
SCENARIO_FUNCTIONS: dict[ScenarioName, ScenarioFn] = {
    "kill_worker": kill_worker,
    "broker_restart": broker_restart,
    "clickhouse_away": clickhouse_away,
    "provider_away": provider_away,
    "malformed_flood": malformed_flood,
}


# -- the suite -------------------------------------------------------------------------------------


def scenario_env(
    settings: Settings, cfg: broker.BrokerConfig, root: Path, prefix: str, options: ChaosOptions
) -> dict[str, str]:
    """Environment of one scenario's deployment (its children inherit it)."""
    return {
        "AIFLEET_KAFKA_BOOTSTRAP": cfg.bootstrap,
        "AIFLEET_KAFKA__TOPIC_PREFIX": prefix,
        "AIFLEET_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "AIFLEET_CONFIG_FILE": str(root / "catalog.toml"),
        "AIFLEET_CLICKHOUSE__BACKEND": "chdb",
        "AIFLEET_CLICKHOUSE__DATA_PATH": str(root / prefix / "clickhouse"),
        # fast failover, as an operator running crash-prone workers would set it
        "AIFLEET_WORKER__SESSION_TIMEOUT_S": "6",
        "AIFLEET_WORKER__HEARTBEAT_INTERVAL_S": "1",
        "AIFLEET_WORKER__COMMIT_INTERVAL_S": "0.5",
        "AIFLEET_RESILIENCE__BREAKER_RECOVERY_S": f"{options.breaker_recovery_s:g}",
    }


async def probe_partitions(d: Deployment, timeout_s: float = 60.0) -> float:
    """One request per tenant, so every requests partition is answered once before any fault: a worker that
    never became ready (stuck restoring a table, say) is the deployment's failure, not the fault's."""
    started = time.monotonic()
    async with d.client() as client:
        probes = {t: client.build(f"readiness probe for {t}", tenant=t) for t in d.tenants}
        outcomes = await asyncio.gather(
            *(client.request(r, timeout=timeout_s) for r in probes.values()), return_exceptions=True
        )
    stalled = [t for t, o in zip(probes, outcomes, strict=True) if isinstance(o, BaseException)]
    if stalled:
        parts = sorted({(murmur2(t.encode()) & 0x7FFFFFFF) % d.settings.kafka.partitions for t in stalled})
        raise AifleetError(
            f"not ready before any fault: requests partition(s) {parts} went unanswered for {timeout_s:.0f}s "
            "(see the worker logs, e.g. a table recovery that never finishes)"
        )
    return round(time.monotonic() - started, 3)


def run_scenario(
    name: ScenarioName,
    settings: Settings,
    cfg: broker.BrokerConfig,
    root: Path,
    tenants: list[str],
    options: ChaosOptions,
) -> ChaosResult:
    """Start a deployment for one scenario, run it within its time bound, stop everything it started."""
    run_id = uuid.uuid4().hex[:6]
    prefix = f"chaos-{run_id}-{name.replace('_', '-')}"
    env = scenario_env(settings, cfg, root, prefix, options)
    # never real providers, never someone else's emulator: the faults are injected into ours
    with patched_environ(
        env, drop_prefixes=("AIFLEET_KEYS__", "AIFLEET_PROVIDER_BASE_URL", "AIFLEET_KAFKA__BOOTSTRAP")
    ):
        s = Settings()
        stack = Stack(
            s,
            workers=options.workers,
            analytics=name == "clickhouse_away",
            emulator_latency_ms=options.latency_ms,
            stop_broker=False,
            log_dir=root / "logs" / prefix,
            config_file=root / "catalog.toml",
        )
        started = time.monotonic()
        try:
            stack.start()
            stack.wait_ready(timeout_s=min(180.0, options.scenario_timeout_s))
            # traffic starts only once the groups are stable: a worker joining after the first answer would
            # rebalance the group mid-run, and the replays that causes would be counted against the fault
            settled = wait_for_group(cfg.bootstrap, s.pipeline_group, options.workers, stable_for_s=1.0)
            if stack.analytics:
                settled = settled and wait_for_group(cfg.bootstrap, s.usage_sink_group, 1, stable_for_s=1.0)
            d = Deployment(stack=stack, settings=s, broker=cfg, tenants=tenants, options=options, run_id=run_id)
            ready_s = asyncio.run(probe_partitions(d))
            emulator_reset(stack.emulator_url)
            remaining = max(1.0, options.scenario_timeout_s - (time.monotonic() - started))
            try:
                result = asyncio.run(asyncio.wait_for(SCENARIO_FUNCTIONS[name](d), remaining))
            except TimeoutError:
                result = d.traffic.result(name) if d.traffic is not None else ChaosResult(scenario=name)
                result.notes.append(f"cut short after {options.scenario_timeout_s:.0f}s")
                result.checks["finished_in_time"] = False
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - a scenario's failure is its result
                result = d.traffic.result(name) if d.traffic is not None else ChaosResult(scenario=name)
                result.notes.append(f"the scenario failed: {type(exc).__name__}: {exc}"[:2000])
                result.checks["ran"] = False
            result.measurements["deployment_s"] = round(time.monotonic() - started, 1)
            result.measurements["probes_answered_in_s"] = ready_s
            if settled is None:
                result.notes.append("the consumer groups were not stable before traffic started")
            result.notes.append(f"logs: {stack.logs}")
            return result
        except AifleetError as exc:
            return ChaosResult(scenario=name, checks={"ran": False}, notes=[str(exc), f"logs: {stack.logs}"])
        finally:
            stack.stop()


def ephemeral_port_range() -> tuple[int, int] | None:
    """The kernel's range of ports for outgoing connections (Linux), if it can be read."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


def self_connect_hazard(port: int) -> str | None:
    """Why a broker on ``port`` may fail to come back on loopback, or None.

    A client reconnecting to 127.0.0.1:<port> while the broker is down is given an ephemeral source port;
    when that port is <port> itself, the connection connects to itself. Closed, it leaves a TIME_WAIT on
    127.0.0.1:<port> for a minute, and the restarted broker cannot bind ("Address already in use")."""
    span = ephemeral_port_range()
    if span is None or not span[0] <= port <= span[1]:
        return None
    return (
        f"port {port} lies in the ephemeral port range {span[0]}-{span[1]}: a client reconnecting while the "
        "broker is down can connect to itself on it and keep the restarted broker from binding"
    )


def run_suite(
    options: ChaosOptions, settings: Settings, *, say: Callable[[str], None] = lambda _m: None
) -> ChaosReport:
    """Run the chosen scenarios one after another on a broker of the suite's own; stop it at the end."""
    started = time.monotonic()
    root = settings.home / "chaos" / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    cfg = chaos_broker(settings, root)
    if broker.port_open(cfg.host, cfg.port) or broker.port_open(cfg.host, cfg.controller_port):
        raise AifleetError(
            f"port {cfg.port} or {cfg.controller_port} is in use: the fault suite restarts its broker, so it needs "
            "one of its own (set AIFLEET_KAFKA__PORT to a free port)"
        )
    tenants = chaos_tenants(settings.kafka.partitions)
    (root / "catalog.toml").write_text(catalog_toml(tenants))
    hazard = self_connect_hazard(cfg.port)
    if hazard:
        say(f"warning: {hazard} (see docs/operations.md, 'Fault suite')")
    say(f"starting the suite's broker on {cfg.bootstrap} (data in {cfg.data_dir})")
    results: list[ChaosResult] = []
    try:  # the start inside: a Ctrl-C or a failed start still stops the broker
        start_broker(cfg)
        for i, name in enumerate(options.scenarios):
            if not broker.answers_metadata(cfg.bootstrap):
                say("a scenario left the broker down: starting it again")
                try:  # nothing reconnects to it any more, so a port held by a client goes free within a minute
                    start_broker(cfg, timeout_s=240.0, attempts=15)
                except BrokerError as exc:
                    why = f"not run: the suite's broker could not be started again ({str(exc).splitlines()[0]})"
                    results += [
                        ChaosResult(scenario=n, checks={"ran": False}, notes=[why]) for n in options.scenarios[i:]
                    ]
                    break
            say(f"scenario {name}: {options.requests} requests")
            result = run_scenario(name, settings, cfg, root, tenants, options)
            say(
                f"scenario {name}: sent {result.sent}, answered {result.answered}, lost {result.lost}, "
                f"recovery {result.recovery_s}s"
            )
            results.append(result)
    finally:
        broker.stop(cfg)
    return ChaosReport(options=options, results=results, elapsed_s=round(time.monotonic() - started, 1))
