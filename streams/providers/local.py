"""The local provider: sentence embeddings from the project's own ONNX model, on this worker.

It serves embeddings only (all-MiniLM-L6-v2, 384 dimensions). Calls from concurrent requests are
micro-batched (``models.batching.MicroBatcher``) into one onnxruntime run; the infer agent, which
takes embedding requests straight from the stream in micro-batches, shares the same embedder.
It is the backup in fallback chains for what it can serve, and costs nothing per token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import lru_cache

from pydantic import SecretStr

from models.batching import MicroBatcher
from models.embedder import Embedder
from schemas.request import Request
from schemas.response import TokenUsage
from streams.catalog import ProviderSpec
from streams.errors import BadRequest, ProviderUnavailable
from streams.providers.base import Completion, Embeddings, StreamEvent


@lru_cache(maxsize=1)
def shared_embedder() -> Embedder:
    """One embedder per process, loaded on first use: fp16 on CUDA, int8 on CPUs (cosine >= 0.99 to fp32), int8
    also when onnxruntime falls back from CUDA to the CPU (NVIDIA device files but no usable CUDA)."""
    return Embedder("auto", "auto", cpu_variant="int8")


class LocalProvider:
    """Embeddings from the local ONNX model."""

    def __init__(self, name: str, spec: ProviderSpec, api_key: SecretStr | None = None) -> None:
        self.name = name
        self.spec = spec
        self._batcher: MicroBatcher[str, tuple[list[float], int]] | None = None

    async def _run_batch(self, texts: list[str]) -> Sequence[tuple[list[float], int]]:
        embedder = shared_embedder()
        vectors, lengths = await embedder.embed_counted_async(texts)
        return [(v.tolist(), n) for v, n in zip(vectors, lengths, strict=True)]

    @property
    def batcher(self) -> MicroBatcher[str, tuple[list[float], int]]:
        if self._batcher is None:
            self._batcher = MicroBatcher(self._run_batch, max_batch=64, max_wait_ms=2.0)
        return self._batcher

    async def embed(self, request: Request, model: str) -> Embeddings:
        texts = list(request.input or [])
        try:
            results = await self.batcher.submit_many(texts)
        except Exception as exc:
            raise ProviderUnavailable(f"local model failed: {type(exc).__name__}: {exc}", provider=self.name) from exc
        return Embeddings(
            vectors=[v for v, _ in results],
            model=model,
            usage=TokenUsage(input_tokens=sum(n for _, n in results)),
        )

    async def complete(self, request: Request, model: str) -> Completion:
        raise BadRequest(f"{self.name} serves embeddings only", provider=self.name)

    async def stream(self, request: Request, model: str) -> AsyncIterator[StreamEvent]:
        raise BadRequest(f"{self.name} serves embeddings only", provider=self.name)
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
