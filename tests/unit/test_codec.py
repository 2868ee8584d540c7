"""Bytes at the edge: every kind of bad record becomes the right typed error and dead letter."""

from __future__ import annotations

import base64

import orjson
import pytest

from schemas.dead_letter import DeadLetterReason
from schemas.usage import UsageEvent
from streams.codec import dead_letter, decode_event, decode_request
from streams.errors import InvalidJson, InvalidRecord, PayloadTooLarge, SchemaViolation, UnsupportedSchemaVersion

GOOD = {"request_id": "r-1", "tenant": "acme", "messages": [{"role": "user", "content": "hello"}]}


def test_valid_request_decodes() -> None:
    req = decode_request(orjson.dumps(GOOD), max_bytes=1024)
    assert req.request_id == "r-1" and req.kind == "chat"


@pytest.mark.parametrize(
    ("raw", "error", "rid"),
    [
        (None, InvalidJson, None),
        (b"", InvalidJson, None),
        (b"{oops", InvalidJson, None),
        (b"\xff\xfe", InvalidJson, None),
        (b'"a string"', SchemaViolation, None),
        (orjson.dumps({**GOOD, "messages": []}), SchemaViolation, "r-1"),
        (orjson.dumps({**GOOD, "schema_version": 7}), UnsupportedSchemaVersion, "r-1"),
        (orjson.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * 2000}]}), PayloadTooLarge, "r-1"),
    ],
)
def test_bad_records_raise_typed_errors(raw: bytes | None, error: type[InvalidRecord], rid: str | None) -> None:
    with pytest.raises(error) as info:
        decode_request(raw, max_bytes=1024)
    assert info.value.request_id == rid
    assert info.value.message


def test_schema_violation_names_the_field() -> None:
    with pytest.raises(SchemaViolation) as info:
        decode_request(orjson.dumps({**GOOD, "max_tokens": -5}), max_bytes=4096)
    assert "max_tokens" in info.value.message


def test_dead_letter_keeps_the_original_bytes_and_truncates_huge_ones() -> None:
    raw = b"{broken" + b"x" * 100
    letter = dead_letter(InvalidJson("not JSON"), raw, topic="t.requests", partition=2, offset=41, max_payload=10)
    assert letter.reason is DeadLetterReason.INVALID_JSON
    assert base64.b64decode(letter.payload_b64) == raw[:10]
    assert letter.payload_truncated and letter.payload_size == len(raw)
    assert (letter.partition, letter.offset, letter.source_topic) == (2, 41, "t.requests")
    full = dead_letter(InvalidJson("x"), raw, topic="t", partition=0, offset=0, max_payload=10_000)
    assert base64.b64decode(full.payload_b64) == raw and not full.payload_truncated


def test_reply_ids_reads_requests_and_routed_records_and_ignores_garbage() -> None:
    from streams.codec import reply_ids

    assert reply_ids(b'{"request_id": "r1", "tenant": "acme"}')["request_id"] == "r1"
    routed = b'{"request": {"request_id": "r2", "tenant": "acme"}, "reply_topic": "aifleet.responses.acme"}'
    assert reply_ids(routed) == {"request_id": "r2", "tenant": "acme", "reply_topic": "aifleet.responses.acme"}
    assert reply_ids(b"\xff not json") == {}
    assert reply_ids(None) == {}
    assert reply_ids(b"[1, 2]") == {}


def test_decode_event_types_what_is_wrong_with_an_internal_record() -> None:
    event = UsageEvent(event_id="e:1", request_id="e", tenant="acme", provider="openai", model="m", status="ok")
    assert decode_event(event.to_json(), UsageEvent) == event
    with pytest.raises(InvalidJson):
        decode_event(None, UsageEvent)
    with pytest.raises(InvalidJson):
        decode_event(b"{nope", UsageEvent)
    with pytest.raises(SchemaViolation, match="must be a JSON object"):
        decode_event(b"[1]", UsageEvent)
    with pytest.raises(SchemaViolation, match=r"not a UsageEvent: .*provider") as caught:
        decode_event(orjson.dumps({"event_id": "x:1", "request_id": "x", "tenant": "acme"}), UsageEvent)
    assert (caught.value.request_id, caught.value.tenant) == ("x", "acme")
    assert caught.value.dlq_reason is DeadLetterReason.SCHEMA_VIOLATION


def test_a_dead_letter_with_the_default_cap_fits_a_stock_broker() -> None:
    from streams.settings import WorkerSettings

    stock_record_limit = 1_048_588  # message.max.bytes of a broker nobody configured
    raw = b"\x00" * 2 * WorkerSettings().max_request_bytes  # as large as the gate can see (8x is peeked)
    worst = SchemaViolation("\u20ac" * 4000, request_id="r" * 128, tenant="t" * 63)  # 3 UTF-8 bytes a char
    letter = dead_letter(
        worst, raw, topic="t.requests", partition=0, offset=0, max_payload=WorkerSettings().dlq_max_payload_bytes
    )
    assert len(letter.to_json()) < stock_record_limit - 1024  # room for the record batch's own overhead
    assert letter.payload_truncated and letter.payload_size == len(raw)
