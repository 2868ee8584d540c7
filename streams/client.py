"""The Python client: produce a request, await its response by request id.

Any Kafka client in any language can do the same from the JSON contract alone; this one is a
convenience. It reads its reply topic without a consumer group (every client sees every reply on
its topic and keeps those it asked for), dedups responses by request id, and counts duplicates.

    async with AifleetClient("127.0.0.1:29092") as client:
        response = await client.ask("What is Kafka?", tenant="acme")

    with SyncClient("127.0.0.1:29092") as client:
        print(client.ask("What is Kafka?", tenant="acme").output)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas.chunk import StreamChunk
from schemas.request import Message, Request
from schemas.response import Response
from streams.errors import AifleetError

if TYPE_CHECKING:
    from streams.settings import Settings

T = TypeVar("T")

__all__ = ["AifleetClient", "ClientDeliveryError", "ClientTimeout", "SyncClient"]


class ClientTimeout(AifleetError):
    """No response arrived for a request within the client's timeout."""


class ClientDeliveryError(AifleetError):
    """The broker did not accept the request (it was never produced); sending it again is safe."""


class AifleetClient:
    """Async client over aiokafka: ``submit`` / ``wait`` / ``request`` / ``ask`` / ``stream``."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "aifleet",
        reply_topic: str | None = None,
        partitions: int = 4,
        linger_ms: int = 2,
        kafka_options: Mapping[str, Any] | None = None,
        remember_answered: int = 100_000,
    ) -> None:
        """``kafka_options``: aiokafka security arguments for a secured cluster
        (``security_protocol``, ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``,
        ``ssl_context``; ``streams.kafka_auth.aiokafka_options(settings)`` builds them from settings).
        ``remember_answered``: how many answered request ids are kept to count duplicates (the oldest go first)."""
        self._bootstrap = bootstrap
        self._kafka_options = dict(kafka_options or {})
        self._prefix = topic_prefix
        self.requests_topic = f"{topic_prefix}.requests"
        self.reply_topic = reply_topic or f"{topic_prefix}.responses"
        self.chunks_topic = f"{topic_prefix}.chunks" + self.reply_topic.removeprefix(f"{topic_prefix}.responses")
        self._partitions = partitions
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[Response]] = {}
        self._chunks: dict[str, asyncio.Queue[StreamChunk | Response]] = {}
        self._done: OrderedDict[str, None] = OrderedDict()
        self._remember = max(1, remember_answered)
        self.responses_seen = 0
        self.duplicates = 0
        self.unsolicited = 0
        self.stream_grace_s = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str | None = None, **overrides: Any) -> Self:
        """A client for the cluster ``settings`` describe: its bootstrap (unless given), topic prefix, partition
        count and security options (SASL/SSL); ``overrides`` replace any of the keyword arguments."""
        from streams.kafka_auth import aiokafka_options

        options: dict[str, Any] = {
            "topic_prefix": settings.kafka.topic_prefix,
            "partitions": settings.kafka.partitions,
            "kafka_options": aiokafka_options(settings),
            **overrides,
        }
        return cls(bootstrap or settings.kafka_servers, **options)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self._ensure_topics([self.requests_topic, self.reply_topic, self.chunks_topic])
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            linger_ms=self._linger_ms,
            acks="all",
            enable_idempotence=True,
            max_request_size=16 * 1024 * 1024,
            **self._kafka_options,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            **self._kafka_options,
        )
        await self._consumer.start()
        tps = [
            TopicPartition(t, p)
            for t in (self.reply_topic, self.chunks_topic)
            for p in (self._consumer.partitions_for_topic(t) or await self._partitions_of(t))
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, so nothing produced after start() is missed
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def _partitions_of(self, topic: str) -> set[int]:
        assert self._consumer is not None
        for _ in range(100):
            parts = self._consumer.partitions_for_topic(topic)
            if parts:
                return parts
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.05)
        raise AifleetError(f"topic {topic} has no partitions visible to the client")

    async def _ensure_topics(self, names: list[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, **self._kafka_options)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [n for n in dict.fromkeys(names) if n not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(n, self._partitions, 1) for n in missing])
        finally:
            await admin.close()

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- reading -----------------------------------------------------------------------------
    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=2000)
            for tp, records in batches.items():
                for record in records:
                    if record.value is None:
                        continue
                    if tp.topic == self.chunks_topic:
                        self._on_chunk(record.value)
                    else:
                        self._on_response(record.value)

    def _on_response(self, value: bytes) -> None:
        try:
            response = Response.from_json(value)
        except ValueError:
            return
        rid = response.request_id
        if rid in self._done:
            self.duplicates += 1
            return
        fut = self._waiting.pop(rid, None)
        if fut is None:
            self.unsolicited += 1
            return
        self._done[rid] = None
        if len(self._done) > self._remember:
            self._done.popitem(last=False)
        self.responses_seen += 1
        if rid in self._chunks:
            self._chunks[rid].put_nowait(response)
        if not fut.done():
            fut.set_result(response)

    def _on_chunk(self, value: bytes) -> None:
        try:
            chunk = StreamChunk.from_json(value)
        except ValueError:
            return
        queue = self._chunks.get(chunk.request_id)
        if queue is not None:
            queue.put_nowait(chunk)

    # -- requests ----------------------------------------------------------------------------
    async def submit(self, request: Request) -> asyncio.Future[Response]:
        """Produce a request; returns a future that resolves with its (first) response.

        Raises ``ClientDeliveryError`` when the producer refuses the request at once; the future
        fails with it when the broker does not take it. Either way, sending it again is safe.
        """
        assert self._producer is not None, "start() the client first"
        if request.request_id in self._waiting:
            return self._waiting[request.request_id]
        self._done.pop(request.request_id, None)  # asked again: its new answer is not a duplicate
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting[request.request_id] = fut
        try:
            delivery = await self._producer.send(self.requests_topic, request.to_json(), key=request.tenant.encode())
        except Exception as exc:
            if self._waiting.get(request.request_id) is fut:
                del self._waiting[request.request_id]
            error = ClientDeliveryError(f"request {request.request_id} was not sent: {exc!r}")
            if not fut.done():  # a concurrent submit of the same id may wait on it
                fut.set_exception(error)
                fut.exception()  # retrieved: nobody else need await it
            raise error from exc

        def delivered(d: asyncio.Future[Any]) -> None:
            # a request the broker never took will never be answered: fail its waiter now, not at its timeout
            exc = None if d.cancelled() else d.exception()
            if (d.cancelled() or exc is not None) and not fut.done():
                self._waiting.pop(request.request_id, None)
                fut.set_exception(ClientDeliveryError(f"request {request.request_id} was not delivered: {exc!r}"))

        delivery.add_done_callback(delivered)
        return fut

    async def request(self, request: Request, *, timeout: float = 60.0) -> Response:
        """Produce a request and wait for its response; raises ClientTimeout."""
        fut = await self.submit(request)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            self._waiting.pop(request.request_id, None)
            raise ClientTimeout(f"no response for {request.request_id} within {timeout}s") from exc

    async def ask(self, prompt: str, *, tenant: str, timeout: float = 60.0, **fields: Any) -> Response:
        """Ask one chat question."""
        return await self.request(self.build(prompt, tenant=tenant, **fields), timeout=timeout)

    def build(self, prompt: str, *, tenant: str, **fields: Any) -> Request:
        """A chat request for ``prompt`` with a fresh request id, replying to this client's topic."""
        fields.setdefault("request_id", uuid.uuid4().hex)
        if self.reply_topic != f"{self._prefix}.responses":
            fields.setdefault("reply_topic", self.reply_topic)
        return Request(tenant=tenant, messages=[Message(role="user", content=prompt)], **fields)

    async def stream(self, request: Request, *, timeout: float = 60.0) -> AsyncIterator[StreamChunk | Response]:
        """Yield a streamed request's chunks in order, then its closing Response.

        Raises ``ClientDeliveryError`` when the request was not delivered and ``ClientTimeout``
        when nothing arrives for ``timeout`` seconds.
        """
        if not request.stream:
            request = request.model_copy(update={"stream": True})
        rid = request.request_id
        queue: asyncio.Queue[StreamChunk | Response] = asyncio.Queue()
        self._chunks[rid] = queue
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Response] | None = None
        getter: asyncio.Task[StreamChunk | Response] | None = None
        try:
            fut = await self.submit(request)
            next_seq = 0
            held: dict[int, StreamChunk] = {}
            response: Response | None = None
            final_seen = False
            grace_until = 0.0
            while True:
                wait = timeout if response is None else max(0.0, grace_until - loop.time())
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                # the submit future fails when the broker refuses the request; its answer comes through the queue
                answered = fut.done()
                watch: set[asyncio.Future[Any]] = {getter} if answered else {getter, fut}
                await asyncio.wait(watch, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    raise cast(BaseException, fut.exception())
                if not getter.done():
                    if not answered and fut.done():
                        continue  # answered just now: the response is in the queue
                    if response is None:
                        raise ClientTimeout(f"no stream for {rid} within {timeout}s")
                    for seq in sorted(held):  # the closing chunk never came: give what there is
                        yield held.pop(seq)
                    yield response
                    return
                item, getter = getter.result(), None
                if isinstance(item, Response):
                    # chunks and responses are different topics: the closing chunk may still be on its way
                    response, grace_until = item, loop.time() + self.stream_grace_s
                elif item.seq >= next_seq:  # a lower seq is a replayed chunk
                    held[item.seq] = item
                    while next_seq in held:
                        chunk = held.pop(next_seq)
                        final_seen = final_seen or chunk.final
                        next_seq += 1
                        yield chunk
                streamed_nothing = next_seq == 0 and not held
                if response is not None and (final_seen or (response.status == "error" and streamed_nothing)):
                    yield response
                    return
        finally:
            if getter is not None:
                getter.cancel()
            self._chunks.pop(rid, None)
            if fut is not None and self._waiting.get(rid) is fut:
                del self._waiting[rid]
                fut.cancel()  # nobody waits for it any more (a late delivery failure is not raised)


class SyncClient:
    """A blocking wrapper: runs an AifleetClient on a private event loop thread."""

    def __init__(self, bootstrap: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aifleet-client", daemon=True)
        self._client = AifleetClient(bootstrap, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Self:
        self._thread.start()
        self._run(self._client.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._client.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def ask(self, prompt: str, *, tenant: str, timeout: float = 60.0, **fields: Any) -> Response:
        return self._run(self._client.ask(prompt, tenant=tenant, timeout=timeout, **fields))

    def request(self, request: Request, *, timeout: float = 60.0) -> Response:
        return self._run(self._client.request(request, timeout=timeout))
