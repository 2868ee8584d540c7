"""``aifleet demo``: the main job on the embedded defaults, start to finish, then a clean stop.

Starts the local broker, the provider emulator, the analytics process (chDB) and a worker; sends
chat, streamed and embedding requests plus a malformed record through Kafka; shows the answers,
the dead letter, and the cost report ClickHouse computed from the usage events; stops everything.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from schemas.dead_letter import DeadLetter
from schemas.request import Request
from schemas.response import Response
from streams.client import AifleetClient
from streams.settings import Settings
from streams.stack import Stack

QUESTIONS = [
    ("acme", "What does a Kafka consumer group do?"),
    ("acme", "Why put a gateway in front of LLM providers?"),
    ("globex", "Name three causes of tail latency."),
    ("globex", "What is an idempotency key?"),
]


async def _traffic(bootstrap: str, settings: Settings, console: Console) -> list[Response]:
    prefix = settings.kafka.topic_prefix
    answers: list[Response] = []
    async with AifleetClient.from_settings(settings, bootstrap, topic_prefix=prefix) as client:
        table = Table(title="chat requests through Kafka")
        for col in ("tenant", "question", "answer", "provider/model", "tokens", "cost $", "ms"):
            table.add_column(col)
        results = await asyncio.gather(*(client.ask(q, tenant=t, timeout=60) for t, q in QUESTIONS))
        for (tenant, q), r in zip(QUESTIONS, results, strict=True):
            answers.append(r)
            table.add_row(
                tenant,
                q,
                (r.output or r.status)[:48],
                f"{r.provider}/{r.model}",
                f"{r.usage.input_tokens}+{r.usage.output_tokens}",
                f"{r.cost_usd:.6f}",
                f"{r.latency.total_ms:.0f}" if r.latency else "",
            )
        console.print(table)

        question = "What is a cache stampede?"
        first = await client.ask(question, tenant="acme", temperature=0, timeout=60)
        second = await client.ask(question, tenant="acme", temperature=0, timeout=60)
        answers += [first, second]
        console.print(
            f"[bold]response cache[/bold]: the same question twice at temperature 0: {first.status} "
            f"(${first.cost_usd:.6f}), then {second.status} "
            f"({second.route.reason if second.route else '?'}, $0, "
            f"{second.latency.total_ms if second.latency else 0:.0f} ms, same answer: {first.output == second.output})"
        )

        console.print("[bold]streamed answer[/bold] (chunks from the chunks topic, in order):")
        req = client.build("Stream me a short answer about partitions.", tenant="acme", stream=True)
        async for item in client.stream(req, timeout=60):
            if isinstance(item, Response):
                answers.append(item)
                console.print(
                    f"\n[dim]closed by a {item.status} response: {item.usage.output_tokens} output tokens, "
                    f"${item.cost_usd:.6f}[/dim]"
                )
            elif item.delta:
                console.print(item.delta, end="")

        emb = await client.request(
            Request(
                request_id=uuid.uuid4().hex, tenant="acme", kind="embedding", input=["kafka partitions", "consumer lag"]
            ),
            timeout=60,
        )
        answers.append(emb)
        dims = len(emb.embeddings[0]) if emb.embeddings else 0
        console.print(
            f"[bold]embedding request[/bold]: {emb.status} from {emb.provider}/{emb.model}, "
            f"{len(emb.embeddings or [])} vectors of {dims} dims"
        )

        # a malformed record, as a buggy producer would send it: answered with a typed error and dead-lettered
        bad_id = f"demo-bad-{uuid.uuid4().hex[:6]}"
        fut = asyncio.get_running_loop().create_future()
        client._waiting[bad_id] = fut
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                f"{prefix}.requests", b'{"request_id": "%s", "tenant": "acme"}' % bad_id.encode(), key=b"acme"
            )
        finally:
            await producer.stop()
        bad = await asyncio.wait_for(fut, 60)
        console.print(
            f"[bold]malformed record[/bold]: answered {bad.status} "
            f"({bad.error.reason.value if bad.error else '?'}: {bad.error.message if bad.error else ''})"
        )
    letter = await _last_dead_letter(bootstrap, f"{prefix}.dlq", bad_id)
    if letter is not None:
        console.print(
            f"[bold]dead-letter topic[/bold]: reason={letter.reason.value}, "
            f"{letter.payload_size} bytes kept, from {letter.source_topic}@{letter.offset}"
        )
    return answers


async def _last_dead_letter(bootstrap: str, topic: str, request_id: str) -> DeadLetter | None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    letter = DeadLetter.from_json(r.value)
                    if letter.request_id == request_id:
                        return letter
    finally:
        await consumer.stop()
    return None


def _cost_report(settings: Settings, expected: Decimal, console: Console) -> None:
    from streams.analytics.client import open_reader, resolve_data_path
    from streams.analytics.endpoint import read_advertisement
    from streams.analytics.errors import AnalyticsError
    from streams.analytics.reports import render, report

    deadline = time.monotonic() + 60
    rep = None
    path = resolve_data_path(settings.clickhouse, settings.home)
    while time.monotonic() < deadline:
        if settings.clickhouse.backend == "chdb" and read_advertisement(path) is None:
            time.sleep(0.5)  # the analytics process owns chDB: read through its endpoint once it is up
            continue
        try:
            reader = open_reader(settings.clickhouse, home=settings.home)
        except AnalyticsError:
            time.sleep(1.0)  # the analytics process is still starting its query endpoint
            continue
        try:
            rep = report(reader, "cost", since="1d", by="tenant,provider,model")
            if round(Decimal(str(rep.total("cost_usd"))), 6) >= round(expected, 6):
                console.print("[bold]cost report[/bold] (ClickHouse, from the usage events):")
                console.print(render(rep, "table", reader))
                return
        finally:
            reader.close()
        time.sleep(1.0)
    console.print("[yellow]the cost report did not catch up within 60 s[/yellow]")


def run_demo(settings: Settings, console: Console) -> int:
    """Run the demo; returns the process exit code."""
    stack = Stack(settings, workers=1)
    with stack.running(
        console,
        "starting the broker, the emulator, the analytics process and a worker...",
        "stopping everything the demo started...",
    ):
        console.print(f"aifleet is up: Kafka at {stack.bootstrap}, providers emulated at {stack.emulator_url}")
        answers = asyncio.run(_traffic(stack.bootstrap, settings, console))
        charged = sum((Decimal(str(a.cost_usd)) for a in answers), Decimal(0))
        with console.status("waiting for the usage events to land in ClickHouse..."):
            _cost_report(settings, charged, console)
        stack.check_alive()
        ok = sum(1 for a in answers if a.status in ("ok", "cached"))
        console.print(
            f"[green]{ok} of {len(answers)} requests answered (ok or from the cache); "
            "the malformed one was dead-lettered[/green]"
        )
        return 0 if ok == len(answers) else 1
