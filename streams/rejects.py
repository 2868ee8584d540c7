"""Rejecting a record: its dead letter first, then (when its id is readable) a typed error reply.

A rejected record is acked once its dead letter is on the broker, so nothing a bad record carries
can hold its partition's committed offset back:

- a reply topic is used only when the tenant may name it and the broker has it
  (``TopicDirectory``, from broker metadata; topics are never auto-created). Otherwise, or when
  the send to it fails or takes longer than ``REPLY_SEND_TIMEOUT_S``, the reply goes to the
  shared responses topic;
- a dead letter the broker refuses as too large is cut down and sent again
  (``DLQ_RETRY_CUTS``); its ``payload_size`` and ``payload_sha256`` always describe the whole record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from pydantic import ValidationError

from schemas.base import Event
from schemas.dead_letter import DeadLetter
from schemas.response import Response
from schemas.routed import RoutedRequest
from streams.codec import dead_letter, first_errors, reply_ids
from streams.errors import InvalidRecord, ProcessingFailed, SchemaViolation
from streams.publisher import Publisher
from streams.topics import Topics

log = logging.getLogger(__name__)

REPLY_SEND_TIMEOUT_S = 15.0
"""The longest an error reply to a tenant's own reply topic may take before it goes to the shared one."""

DLQ_RETRY_CUTS = (65_536, 0)
"""Payload bytes a dead letter keeps on its second and third try, after the broker refused it as too large."""

TopicExists = Callable[[str], Awaitable[bool]]
"""Whether the broker has a topic (``TopicDirectory.exists``)."""


class TopicDirectory:
    """Which topics the broker has, from its metadata.

    A name seen in the last fetch is known at no cost; an unknown one triggers a fresh fetch (one
    at a time; a burst of asks shares the fetch that started after them), so a topic a client just
    created is found. A fetch that fails or takes longer than ``timeout_s`` leaves the name unknown.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Iterable[str]]],
        *,
        always: Iterable[str] = (),
        timeout_s: float = 5.0,
    ) -> None:
        self._fetch = fetch
        self._always = frozenset(always)
        self._known: set[str] = set(self._always)
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._started = 0  # fetches started so far
        self._done_index = 0  # the index (1-based) of the last fetch that completed
        self.fetches = 0

    async def exists(self, topic: str) -> bool:
        if topic in self._known:
            return True
        asked_after = self._started
        async with self._lock:
            if self._done_index <= asked_after:  # no fetch started after the ask has completed yet
                await self._refresh()
        return topic in self._known

    async def _refresh(self) -> None:
        self._started += 1
        index = self._started
        self.fetches += 1
        try:
            names = await asyncio.wait_for(self._fetch(), self._timeout_s)
        except Exception:
            log.warning("could not fetch the broker's topic list; unknown reply topics count as missing", exc_info=True)
            return
        finally:
            self._done_index = index
        self._known = set(names) | self._always


async def _send(publisher: Publisher, topic: str, event: Event, key: str | None) -> None:
    await (await publisher.publish(topic, event, key=key))


async def send_dead_letter(
    publisher: Publisher,
    dlq_topic: str,
    exc: InvalidRecord,
    raw: bytes | None,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    max_payload: int,
) -> DeadLetter:
    """Write the record's dead letter; cut its payload down while the broker refuses it as too large."""
    cuts = [max_payload, *(c for c in DLQ_RETRY_CUTS if c < max_payload)]
    for n, cut in enumerate(cuts, start=1):
        letter = dead_letter(exc, raw, topic=source_topic, partition=partition, offset=offset, max_payload=cut)
        try:
            await _send(publisher, dlq_topic, letter, exc.request_id)
            return letter
        except MessageSizeTooLargeError:
            if n == len(cuts):
                raise
            log.warning(
                "dead letter of %s[%d]@%d refused as too large with %d payload bytes kept; keeping %d",
                source_topic, partition, offset, cut, cuts[n],
            )  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


async def send_reply(
    publisher: Publisher,
    topics: Topics,
    response: Response,
    *,
    requested: str | None,
    exists: TopicExists | None,
    timeout_s: float = REPLY_SEND_TIMEOUT_S,
) -> str:
    """Send an error reply to ``requested`` when allowed and present, else (or if that fails) to the shared topic.

    Returns the topic the reply went to.
    """
    shared = topics.responses
    target = shared
    tenant = response.tenant
    allowed = bool(requested and requested != shared and tenant and topics.reply_allowed(tenant, requested))
    if allowed and requested and (exists is None or await exists(requested)):
        target = requested
    if target != shared:
        try:
            await asyncio.wait_for(_send(publisher, target, response, response.request_id), timeout_s)
            return target
        except Exception:
            log.warning("error reply to %s failed; answering on %s", target, shared, exc_info=True)
    await _send(publisher, shared, response, response.request_id)
    return shared


async def reject(
    publisher: Publisher,
    topics: Topics,
    exc: InvalidRecord,
    raw: bytes | None,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    max_payload: int,
    requested_reply: str | None,
    exists: TopicExists | None,
    answer: bool = True,
) -> None:
    """Dead-letter a record, then answer it with ``exc`` when its request id is readable (and ``answer``).

    Raises only when the dead letter could not be written (the record then stays unacked). Once
    the letter is written, a reply that cannot be sent anywhere is logged: the record is in the DLQ.
    """
    await send_dead_letter(
        publisher, topics.dlq, exc, raw, source_topic=source_topic, partition=partition, offset=offset,
        max_payload=max_payload,
    )  # fmt: skip
    if not (answer and exc.request_id):
        return
    response = Response(request_id=exc.request_id, tenant=exc.tenant, status="error", error=exc.to_info())
    try:
        await send_reply(publisher, topics, response, requested=requested_reply, exists=exists)
    except Exception:
        log.exception("request %s is dead-lettered but its error reply could not be sent", exc.request_id)


def _ids(raw: bytes | None) -> dict[str, Any]:
    ids = reply_ids(raw)
    return {"request_id": ids.get("request_id"), "tenant": ids.get("tenant"), "reply_topic": ids.get("reply_topic")}


def processing_failed(raw: bytes | None, exc: BaseException) -> ProcessingFailed:
    """The typed error for a record a handler failed on, with the ids it carries."""
    return ProcessingFailed(
        f"processing failed: {type(exc).__name__}: {exc}",
        public_message=f"processing failed: {type(exc).__name__}",
        **_ids(raw),
    )


def invalid_routed(raw: bytes | None, exc: ValidationError) -> SchemaViolation:
    """The typed error for a routed record that is not a ``RoutedRequest``, naming its first errors."""
    return SchemaViolation(f"routed record is invalid: {first_errors(exc)}", **_ids(raw))


async def read_routed(
    event: Any, publisher: Publisher, topics: Topics, *, max_payload: int, exists: TopicExists | None
) -> RoutedRequest | None:
    """The faust event's ``RoutedRequest``; None once an invalid one is dead-lettered and answered."""
    try:
        return RoutedRequest.from_json(event.value)
    except ValidationError as exc:
        err = invalid_routed(event.value, exc)
    await _reject_event(publisher, topics, event, err, max_payload=max_payload, exists=exists)
    return None


async def _reject_event(
    publisher: Publisher,
    topics: Topics,
    event: Any,
    err: InvalidRecord,
    *,
    max_payload: int,
    exists: TopicExists | None,
    answer: bool = True,
) -> None:
    """``reject`` for a faust event: its record's bytes and position, and the reply topic the error read."""
    m = event.message
    await reject(
        publisher, topics, err, event.value, source_topic=m.topic, partition=m.partition, offset=m.offset,
        max_payload=max_payload, requested_reply=err.reply_topic, exists=exists, answer=answer,
    )  # fmt: skip


def crash_handler(
    publisher: Publisher, topics: Topics, *, max_payload: int, exists: TopicExists | None, answer: bool = True
) -> Callable[[Any, BaseException], Awaitable[None]]:
    """``process_windowed``'s ``on_crash``: dead-letter the event's record, and answer it if its id is readable.

    ``answer=False`` for records that are not requests (usage events, cache fills): their request was
    answered already, so a failure to handle them must not send the client an error.
    """

    async def dead_letter_crash(event: Any, exc: BaseException) -> None:
        err = processing_failed(event.value, exc)
        await _reject_event(publisher, topics, event, err, max_payload=max_payload, exists=exists, answer=answer)

    return dead_letter_crash
