"""Benchmark: how fast a fresh analytics process catches up on a backlog of the usage topic.

This is the rate behind the recovery time of the analytics store (``docs/operations.md``: restore a
backup, rebuild from the topic, catch up). N synthetic usage events are produced to the usage topic
of a fresh topic prefix; an analytics process is started on a scratch store and timed from its first
stored row until all N are stored. In the same run the same N events are written straight into
another scratch store, in batches of the sink's size, without Kafka: the ceiling. The figure to
compare across machines is the ratio of the two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from infra.kafka import broker
from streams.admin import ensure_topics
from streams.analytics.bench import seed
from streams.analytics.client import create_client, resolve_data_path
from streams.analytics.endpoint import EndpointReader, read_advertisement
from streams.analytics.migrate import RenderOptions, migrate
from streams.analytics.sink import UsageSink
from streams.analytics.synthetic import synthetic_events
from streams.errors import AifleetError
from streams.kafka_auth import librdkafka_config
from streams.settings import ClickHouseSettings, Settings
from streams.topics import Topics

Progress = Callable[[str, int], None]
SEED = 11  # the same synthetic events through Kafka and straight into the store


@dataclass
class SinkBenchResult:
    """Measured figures of one run."""

    events: int
    batch_size: int
    produce_seconds: float
    start_seconds: float  # analytics process start until its first stored row
    catch_up_seconds: float  # first stored row until all are stored
    catch_up_events_per_s: float
    direct_events_per_s: float  # the same events straight into a scratch store, no Kafka
    catch_up_over_direct: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def _direct_rate(events: int, batch_size: int, path: Path) -> float:
    settings = ClickHouseSettings(data_path=path)
    client = create_client(settings)
    try:
        migrate(client, RenderOptions.from_settings(settings))
        spent = seed(UsageSink(settings, client=client), events, batch_size=batch_size, seed_value=SEED)
        return events / spent
    finally:
        client.close()


def _produce(settings: Settings, bootstrap: str, topic: str, events: int, progress: Progress | None) -> float:
    producer = Producer({**librdkafka_config(settings, bootstrap), "linger.ms": 20, "enable.idempotence": True})
    started = time.perf_counter()
    for i, event in enumerate(synthetic_events(events, seed=SEED)):
        while True:
            try:
                producer.produce(topic, event.to_json(), key=event.tenant.encode())
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 9_999:
            producer.poll(0)
            if progress:
                progress("produce", 10_000)
    if producer.flush(60):
        raise AifleetError("the usage backlog was not fully produced within 60 s")
    return time.perf_counter() - started


def _stored(ch: ClickHouseSettings, home: Path) -> int:
    advert = read_advertisement(resolve_data_path(ch, home))
    if advert is None:
        return 0
    reader = EndpointReader(advert.url, advert.token, timeout_s=10.0)
    try:
        _, rows = reader.query_rows(f"SELECT count() FROM {ch.database}.usage_events")  # noqa: S608
        return int(rows[0][0])
    except AifleetError:
        return 0
    finally:
        reader.close()


def _tail(root: Path, n: int = 1500) -> str:
    try:
        return (root / "analytics.log").read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


def run_sink_bench(
    settings: Settings, *, events: int = 200_000, progress: Progress | None = None, timeout_s: float = 600.0
) -> SinkBenchResult:
    """Produce ``events`` usage events, then time a fresh analytics process catching up on them."""
    batch_size = settings.analytics.batch_size
    with tempfile.TemporaryDirectory(prefix="aifleet-sinkbench-") as scratch:
        root = Path(scratch)
        direct = _direct_rate(events, batch_size, root / "direct")
        started_broker = None
        bootstrap = settings.bootstrap
        if bootstrap is None:
            cfg = broker.from_settings(settings)
            if broker.read_pid(cfg) is None:
                started_broker = cfg
            try:
                broker.start(cfg)
            except BaseException:  # a Ctrl-C or a failed start: stop what was started
                if started_broker is not None:
                    broker.stop(started_broker)
                raise
            bootstrap = cfg.bootstrap
        prefix = f"{settings.kafka.topic_prefix}-sinkbench-{uuid.uuid4().hex[:6]}"
        env = {
            **os.environ,
            "AIFLEET_KAFKA_BOOTSTRAP": bootstrap,
            "AIFLEET_KAFKA__TOPIC_PREFIX": prefix,
            "AIFLEET_CLICKHOUSE__BACKEND": "chdb",
            "AIFLEET_CLICKHOUSE__DATA_PATH": str(root / "store"),
            "PYTHONUNBUFFERED": "1",
        }
        child: subprocess.Popen[bytes] | None = None
        try:
            bench_kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
            topics = Topics.from_settings(settings.model_copy(update={"kafka": bench_kafka}))
            ensure_topics(
                bootstrap,
                topics.all(),
                partitions=settings.kafka.partitions,
                replication_factor=settings.kafka.replication_factor,
                client_config=librdkafka_config(settings, bootstrap),
            )
            produce_s = _produce(settings, bootstrap, topics.usage, events, progress)
            log = (root / "analytics.log").open("wb")
            launched = time.perf_counter()
            child = subprocess.Popen(
                [sys.executable, "-m", "streams.worker", "analytics"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            ch = ClickHouseSettings(data_path=root / "store", database=settings.clickhouse.database)
            first: tuple[float, int] | None = None
            stored = 0
            while time.perf_counter() - launched < timeout_s:
                if child.poll() is not None:
                    raise AifleetError(f"the analytics process exited with {child.returncode}: {_tail(root)}")
                now_stored = _stored(ch, settings.home)
                if now_stored and first is None:
                    first = (time.perf_counter(), now_stored)
                if progress and now_stored > stored:
                    progress("catch up", now_stored - stored)
                stored = max(stored, now_stored)
                if stored >= events:
                    break
                time.sleep(0.25)
            done = time.perf_counter()
            if first is None or stored < events:
                raise AifleetError(f"only {stored} of {events} events stored within {timeout_s:.0f} s: {_tail(root)}")
        finally:
            if child is not None and child.poll() is None:
                child.terminate()
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
            if started_broker is not None:
                broker.stop(started_broker)
    catch_up = done - first[0]
    rate = (events - first[1]) / catch_up if catch_up > 0 else float("inf")
    return SinkBenchResult(
        events=events,
        batch_size=batch_size,
        produce_seconds=round(produce_s, 2),
        start_seconds=round(first[0] - launched, 2),
        catch_up_seconds=round(catch_up, 2),
        catch_up_events_per_s=round(rate),
        direct_events_per_s=round(direct),
        catch_up_over_direct=round(rate / direct, 3),
    )


__all__ = ["SinkBenchResult", "run_sink_bench"]
