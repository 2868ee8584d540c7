"""A table restore that stalls, through the real broker: without the watchdog it hangs, with it it finishes.

The 1-in-50 production stall (docs/operations.md, "A worker stuck restoring a table") was never
reproduced on demand. This test injects the suspected mechanism: during recovery, the records of one
changelog partition that aiokafka returned are dropped before they reach the table (what faust's
``Consumer.getmany`` does to records of a partition that is inactive, a stopped flow or a new
generation), so aiokafka's fetch position is already at the highwater and nothing more is fetched.

A first worker fills the table (and so its changelog) from a source topic. Then two workers restore
it at once with the fault injected, each in its own consumer group over the same changelog
(``tests/fixtures/recovery_stall_app.py``, a one-table app on ``streams.app.new_faust_app`` with the
production ``streams.recovery_watch``): the one without the watchdog is still in recovery, with the
faulted partition at its start offset, long after the stall time; the one with it re-seeks and
restores every entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.admin import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(150)]

PARTITIONS = 2
PER_PARTITION = {0: 40, 1: 25}  # entries whose changelog records land on each partition
DROP = 0  # the changelog partition whose fetched records are dropped
STALL_S = 3.0


def entries() -> dict[str, dict[str, Any]]:
    out = {}
    for p, n in PER_PARTITION.items():
        for i in range(n):
            out[f"p{p}-k{i:03d}"] = {"partition": p, "n": i, "tag": f"value-{p}-{i}"}
    return out


class Child:
    def __init__(self, name: str, env: dict[str, str], home: Path) -> None:
        self.name = name
        self.status_path = home / f"{name}.json"
        self.log_path = home / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.recovery_stall_app"],
            env={**os.environ, **env, "RS_STATUS": str(self.status_path), "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def status(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # this test's own child, by its pid
                self.proc.wait(5)
        self._log.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for c in started:
            c.stop()


async def wait_for(what: str, check: Any, timeout_s: float, *workers: Child) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for w in workers:
            assert w.proc.poll() is None, f"{w.name} exited ({w.proc.returncode}):\n{w.log()}"
        await asyncio.sleep(0.2)
    logs = "\n".join(f"--- {w.name}: {w.status()}\n{w.log()}" for w in workers)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{logs}")


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def test_a_stalled_restore_hangs_without_the_watchdog_and_finishes_with_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = f"rs{uuid.uuid4().hex[:8]}"
    source, changelog = f"{run}.source", f"{run}-entries-changelog"
    ensure_topics(kafka_bootstrap, [source], partitions=PARTITIONS)
    ensure_topics(kafka_bootstrap, [changelog], partitions=PARTITIONS, config={"cleanup.policy": "compact"})
    base = {
        "AIFLEET_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "AIFLEET_KAFKA__PARTITIONS": str(PARTITIONS),
        "AIFLEET_HOME": str(tmp_path),
        "RS_SOURCE": source,
        "RS_CHANGELOG": changelog,
    }
    want = entries()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for key, value in want.items():
            await producer.send(source, json.dumps(value).encode(), key=key.encode(), partition=value["partition"])
        await producer.flush()
    finally:
        await producer.stop()

    with children() as started:
        filler = Child("fill", {**base, "RS_APP_ID": f"{run}-fill", "RS_MODE": "fill"}, tmp_path)
        started.append(filler)

        async def filled() -> bool:
            return await end_offsets(kafka_bootstrap, changelog) == PER_PARTITION

        deadline = time.monotonic() + 60
        while not await filled():
            assert time.monotonic() < deadline, f"the changelog was not filled:\n{filler.log()}"
            assert filler.proc.poll() is None, filler.log()
            await asyncio.sleep(0.3)
        filler.stop()

        fault = {**base, "RS_DROP_PARTITION": str(DROP)}
        bare = Child("no-watchdog", {**fault, "RS_APP_ID": f"{run}-bare"}, tmp_path)
        watched = Child(
            "watchdog", {**fault, "RS_APP_ID": f"{run}-watched", "RS_WATCHDOG_STALL_S": str(STALL_S)}, tmp_path
        )
        started += [bare, watched]

        def dropped(w: Child) -> dict[str, Any] | None:
            s = w.status()
            return s if s and s["dropped"]["done"] else None

        for w in (bare, watched):
            s = await wait_for(f"{w.name}: the fault", lambda w=w: dropped(w), 60, w)
            # the whole partition was fetched and dropped: aiokafka's position is at the highwater
            assert s["dropped"]["offsets"] == list(range(PER_PARTITION[DROP])), s["dropped"]

        def restored(w: Child) -> dict[str, Any] | None:
            s = w.status()
            return s if s and s["completed"] and not s["in_recovery"] else None

        done = await wait_for("the watchdog's worker to finish recovery", lambda: restored(watched), 30, watched)
        assert done["entries"] == want  # every entry, exact values
        assert len(done["entries"]) == sum(PER_PARTITION.values())
        assert done["reseeks"] is not None and done["reseeks"] >= 1
        assert "stalled in recovery" in watched.log()

        # the bare worker: still stuck well past twice the stall time after its fault
        since = bare.status()["dropped"]["at"]  # type: ignore[index]
        await asyncio.sleep(max(0.0, since + 2 * STALL_S + 1 - time.time()))
        s = bare.status()
        assert s is not None and bare.proc.poll() is None
        print(
            f"\nno watchdog: {time.time() - since:.1f}s after the drop: in_recovery={s['in_recovery']} "
            f"offsets={s['active_offsets']} highwaters={s['active_highwaters']} "
            f"watchdog: {done['reseeks']:.0f} re-seek(s), {len(done['entries'])} entries"
        )
        assert s["in_recovery"] and not s["completed"]
        assert s["active_offsets"][str(DROP)] == -1  # nothing of the faulted partition applied
        assert s["active_highwaters"][str(DROP)] == PER_PARTITION[DROP] - 1
        other = 1 - DROP
        assert s["active_offsets"][str(other)] == s["active_highwaters"][str(other)]  # the other one restored
        assert s["reseeks"] is None  # no watchdog in this process
