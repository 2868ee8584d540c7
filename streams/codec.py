"""Bytes to events at the edge: bad records become typed errors, never exceptions that stall a partition."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from schemas.base import Event
from schemas.dead_letter import DeadLetter
from schemas.request import ID_PATTERN, TENANT_PATTERN, TOPIC_PATTERN, Request
from streams.errors import InvalidJson, InvalidRecord, PayloadTooLarge, SchemaViolation, UnsupportedSchemaVersion

E = TypeVar("E", bound=Event)


_PEEKABLE = {
    "request_id": re.compile(ID_PATTERN),
    "tenant": re.compile(TENANT_PATTERN),
    "reply_topic": re.compile(TOPIC_PATTERN),
}


def peek_ids(doc: Any) -> dict[str, str | None]:
    """request_id, tenant and reply_topic from a parsed but possibly invalid document, when usable.

    A value is usable only when it matches the pattern the request schema gives that field: an
    error reply never goes to a tenant or topic that a valid request could not have named.
    """
    if not isinstance(doc, dict):
        return {}
    out: dict[str, str | None] = {}
    for field, pattern in _PEEKABLE.items():
        value = doc.get(field)
        out[field] = value if isinstance(value, str) and pattern.fullmatch(value) else None
    return out


def reply_ids(raw: bytes | None) -> dict[str, str | None]:
    """request_id, tenant and reply_topic of a request record or of a routed one (``{"request": ...}``)."""
    try:
        doc = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return {}
    if isinstance(doc, dict) and isinstance(doc.get("request"), dict):
        ids = peek_ids(doc["request"])
        routed_reply = peek_ids(doc).get("reply_topic")
        return {**ids, "reply_topic": routed_reply or ids.get("reply_topic")}
    return peek_ids(doc)


def first_errors(exc: ValidationError, n: int = 5) -> str:
    """The first ``n`` validation errors, each as ``field.path: message``."""
    parts = []
    for err in exc.errors()[:n]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - n
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode_request(raw: bytes | None, *, max_bytes: int) -> Request:
    """Validate one request record; raise an ``InvalidRecord`` subclass saying exactly what is wrong."""
    if raw is None:
        raise InvalidJson("empty record (no value)")
    if len(raw) > max_bytes:
        ids: dict[str, str | None] = {}
        if len(raw) <= 8 * max_bytes:
            with contextlib.suppress(orjson.JSONDecodeError):
                ids = peek_ids(orjson.loads(raw))
        raise PayloadTooLarge(f"record is {len(raw)} bytes; the limit is {max_bytes}", **ids)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"not JSON: {exc}") from exc
    ids = peek_ids(doc)
    if not isinstance(doc, dict):
        raise SchemaViolation(f"a request must be a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version", 1)
    if version != 1:
        raise UnsupportedSchemaVersion(f"schema_version {version!r} is not supported (1 is)", **ids)
    try:
        return Request.model_validate(doc)
    except ValidationError as exc:
        raise SchemaViolation(first_errors(exc), **ids) from exc


def decode_event(raw: bytes | None, model: type[E]) -> E:
    """Validate one internal event record (usage, health); raise ``InvalidJson`` or ``SchemaViolation``."""
    if raw is None:
        raise InvalidJson("empty record (no value)")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise SchemaViolation(f"a {model.__name__} must be a JSON object, got {type(doc).__name__}")
    ids = peek_ids(doc)
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise SchemaViolation(f"not a {model.__name__}: {first_errors(exc)}", **ids) from exc


def dead_letter(
    exc: InvalidRecord, raw: bytes | None, *, topic: str, partition: int, offset: int, max_payload: int
) -> DeadLetter:
    """The DLQ event for a record that failed with ``exc``: the original bytes survive (up to a cap)."""
    data = raw or b""
    kept = data[:max_payload]
    return DeadLetter(
        reason=exc.dlq_reason,
        detail=exc.message[:4000],
        source_topic=topic,
        partition=partition,
        offset=offset,
        request_id=exc.request_id,
        tenant=exc.tenant,
        payload_b64=base64.b64encode(kept).decode(),
        payload_size=len(data),
        payload_sha256=hashlib.sha256(data).hexdigest(),
        payload_truncated=len(kept) < len(data),
    )
