"""Event contracts of aifleet: every event on every topic is one of these pydantic v2 models.

JSON on the wire. The JSON Schema exported from them lives in ``schemas/json/`` and a test
keeps the two from drifting (``python -m schemas.export`` rewrites it).
"""

from schemas.alert import Alert, AlertSeverity
from schemas.base import SCHEMA_VERSION, Event
from schemas.chunk import StreamChunk
from schemas.dead_letter import DeadLetter, DeadLetterReason
from schemas.errors import ErrorInfo, ErrorReason
from schemas.health import CircuitState, ProviderHealth
from schemas.request import Message, Request, RequestKind, Tier
from schemas.response import Latency, Response, ResponseStatus, RouteInfo, TokenUsage
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent

__all__ = [
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
