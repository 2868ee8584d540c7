"""Export the JSON Schema of every event contract into ``schemas/json/`` (``python -m schemas.export``).

The files are committed; a test fails when they drift from the models, so a contract change is
always a reviewed diff that non-Python producers and consumers can see.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.alert import Alert
from schemas.cache import CacheFill, CachePurge
from schemas.chunk import StreamChunk
from schemas.dead_letter import DeadLetter
from schemas.health import ProviderHealth
from schemas.request import Request
from schemas.response import Response
from schemas.routed import RoutedRequest
from schemas.usage import UsageEvent

JSON_DIR = Path(__file__).resolve().parent / "json"

CONTRACTS: dict[str, type[BaseModel]] = {
    "request": Request,
    "response": Response,
    "stream_chunk": StreamChunk,
    "usage": UsageEvent,
    "provider_health": ProviderHealth,
    "alert": Alert,
    "dead_letter": DeadLetter,
    "routed_request": RoutedRequest,
    "cache_fill": CacheFill,
    "cache_purge": CachePurge,
}


def render(model: type[BaseModel]) -> str:
    """The committed text of a model's JSON Schema (as the validator reads it)."""
    schema = model.model_json_schema(mode="validation")
    schema["$id"] = f"https://aifleet.dev/schemas/{model.__name__}.v1.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected_files() -> dict[Path, str]:
    return {JSON_DIR / f"{name}.schema.json": render(model) for name, model in CONTRACTS.items()}


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(JSON_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
