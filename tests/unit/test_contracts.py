"""Event contracts: JSON Schema committed and in sync, round trips, validation rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

import schemas
from schemas.export import CONTRACTS, expected_files
from schemas.request import Message, Request
from schemas.response import Response, TokenUsage


def test_committed_json_schema_matches_the_models() -> None:
    for path, text in expected_files().items():
        assert path.exists(), f"{path.name} missing: run python -m schemas.export"
        assert path.read_text() == text, f"{path.name} drifted from its model: run python -m schemas.export"


def test_every_contract_carries_schema_version() -> None:
    for name, model in CONTRACTS.items():
        assert "schema_version" in model.model_fields, name


def test_public_surface_is_fixed() -> None:
    assert sorted(schemas.__all__) == sorted(
        [
            "SCHEMA_VERSION",
            "Alert",
            "AlertSeverity",
            "CircuitState",
            "DeadLetter",
            "DeadLetterReason",
            "ErrorInfo",
            "ErrorReason",
            "Event",
            "Latency",
            "Message",
            "ProviderHealth",
            "Request",
            "RequestKind",
            "Response",
            "ResponseStatus",
            "RouteInfo",
            "RoutedRequest",
            "StreamChunk",
            "Tier",
            "TokenUsage",
            "UsageEvent",
        ]
    )


def test_request_round_trip_and_deadline() -> None:
    req = Request(request_id="r-1", tenant="acme", messages=[Message(role="user", content="hi")], deadline_ms=1500)
    back = Request.from_json(req.to_json())
    assert back == req
    assert back.deadline - back.created_at == timedelta(milliseconds=1500)


@pytest.mark.parametrize(
    "fields",
    [
        {"request_id": "r", "tenant": "acme"},  # chat without messages
        {"request_id": "r", "tenant": "acme", "kind": "embedding", "messages": [{"role": "user", "content": "x"}]},
        {"request_id": "", "tenant": "acme", "messages": [{"role": "user", "content": "x"}]},
        {"request_id": "r", "tenant": "UPPER", "messages": [{"role": "user", "content": "x"}]},
        {"request_id": "r", "tenant": "acme", "messages": [{"role": "wizard", "content": "x"}]},
        {"request_id": "r", "tenant": "acme", "messages": [{"role": "user", "content": "x"}], "surprise": 1},
        {"request_id": "r", "tenant": "acme", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
        {"request_id": "r", "tenant": "acme", "kind": "embedding", "input": ["x"] * 2049},  # past OpenAI's 2048
    ],
)
def test_invalid_requests_are_rejected(fields: dict) -> None:
    with pytest.raises(ValidationError):
        Request.model_validate(fields)


def test_events_are_frozen() -> None:
    resp = Response(request_id="r", status="ok", usage=TokenUsage(input_tokens=3, output_tokens=4))
    assert resp.usage.total_tokens == 7
    with pytest.raises(ValidationError):
        resp.status = "error"  # type: ignore[misc]


@pytest.mark.parametrize(
    "created_at",
    ["2025-01-01T00:00:00", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "ahead", "old"],
)
def test_created_at_must_be_aware_and_near_now(created_at: str) -> None:
    import orjson

    from schemas.base import utc_now
    from schemas.request import CREATED_AT_MAX_AGE, CREATED_AT_MAX_AHEAD
    from streams.codec import decode_request
    from streams.errors import SchemaViolation

    now = utc_now()
    shift = {"ahead": CREATED_AT_MAX_AHEAD + timedelta(minutes=1), "old": -CREATED_AT_MAX_AGE - timedelta(hours=1)}
    value = (now + shift[created_at]).isoformat() if created_at in shift else created_at
    raw = orjson.dumps(
        {"request_id": "r", "tenant": "acme", "messages": [{"role": "user", "content": "x"}]} | {"created_at": value}
    )
    with pytest.raises(SchemaViolation, match="created_at") as info:
        decode_request(raw, max_bytes=4096)
    assert info.value.request_id == "r"


def test_created_at_within_the_tolerance_is_kept() -> None:
    from schemas.base import utc_now

    for shift in (timedelta(minutes=4), timedelta(0), -timedelta(days=6)):
        when = utc_now() + shift
        req = Request(request_id="r", tenant="acme", messages=[Message(role="user", content="x")], created_at=when)
        assert req.created_at == when
