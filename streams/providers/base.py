"""The one interface every provider adapter implements, and what adapters hand back.

A new provider is a new module with a class that satisfies ``Provider``; dispatch never
branches on a provider's name. Adapters translate every transport and status error into the
``ProviderError`` subclasses of ``streams.errors`` (``raise ... from exc``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from schemas.request import Request
from schemas.response import TokenUsage
from streams.catalog import ProviderSpec


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished chat completion, normalised."""

    text: str
    model: str
    usage: TokenUsage
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Embedding vectors for each input, in input order."""

    vectors: list[list[float]]
    model: str
    usage: TokenUsage


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One piece of streamed text."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The end of a stream, with the provider's own token counts for it."""

    model: str
    usage: TokenUsage
    finish_reason: str | None = None


StreamEvent = StreamDelta | StreamEnd


@runtime_checkable
class Provider(Protocol):
    """A provider adapter bound to one catalog entry and one API key."""

    name: str
    spec: ProviderSpec

    async def complete(self, request: Request, model: str) -> Completion:
        """Run a chat completion and return it whole."""
        ...

    def stream(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        """Run a chat completion as a stream: deltas, then exactly one ``StreamEnd``."""
        ...

    async def embed(self, request: Request, model: str) -> Embeddings:
        """Embed the request's input texts."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
