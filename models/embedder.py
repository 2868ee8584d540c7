"""``Embedder``: texts in, L2-normalised sentence embeddings out, on a pooled onnxruntime session.

``embed`` is synchronous; ``embed_async`` runs it in a thread executor (one worker by default, so concurrent
calls queue instead of oversubscribing the cores onnxruntime already uses; on a CPU,
``intra_op_threads=1, workers=<cores>`` with concurrent callers gives more throughput for small batches).
Texts of one call are sorted by token count and run in chunks of at most ``max_batch_size`` that never mix
length buckets, each padded to its longest text (or to its bucket on CUDA, where fewer distinct shapes pay
off), then put back in the caller's order. Keeping short texts out of long texts' chunks saves padding work
and, for int8, keeps a long text's activations from widening the dynamic quantisation range of a short one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from models.build import Variant, ensure_model, tokenizer_file
from models.pool import ModelPool
from models.session import Device, EncoderSession, ProviderReport, create_session, nvidia_device_present
from models.tokenize import DEFAULT_BUCKETS, TextTokenizer, bucket_for, pad_ids
from models.weights import MINILM, ModelSpec

DEFAULT_POOL_BUDGET = 1 << 30
log = logging.getLogger(__name__)
MODELS_BY_NAME: dict[str, ModelSpec] = {MINILM.name: MINILM}


@dataclass(frozen=True)
class SessionKey:
    """What identifies one pooled session."""

    model: str
    variant: Variant
    device: Device
    threads: int
    home: str

    @property
    def spec(self) -> ModelSpec:
        """The model's spec."""
        return MODELS_BY_NAME[self.model]


def load_session(key: SessionKey) -> EncoderSession:
    path = ensure_model(key.variant, key.spec, Path(key.home))
    session = create_session(path, key.device, intra_op_threads=key.threads or None)
    if session.report.fell_back:
        log.warning("%s %s: %s", key.model, key.variant, session.report.note)
    return session


def session_size(key: SessionKey) -> int:
    return ensure_model(key.variant, key.spec, Path(key.home)).stat().st_size


_default_pool: ModelPool[SessionKey, EncoderSession] | None = None
_pool_lock = threading.Lock()


def session_pool(budget_bytes: int = DEFAULT_POOL_BUDGET) -> ModelPool[SessionKey, EncoderSession]:
    """The process-wide pool of encoder sessions (created on first use with ``budget_bytes``)."""
    global _default_pool  # noqa: PLW0603 - one pool per process by design
    with _pool_lock:
        if _default_pool is None:
            _default_pool = new_session_pool(budget_bytes)
        return _default_pool


def new_session_pool(budget_bytes: int = DEFAULT_POOL_BUDGET) -> ModelPool[SessionKey, EncoderSession]:
    """A pool of encoder sessions sized by artefact file size, each warmed up after loading."""
    return ModelPool(budget_bytes, load_session, session_size, warm_up=EncoderSession.warm_up)


class Embedder:
    """Sentence embeddings from a local ONNX encoder."""

    def __init__(
        self,
        variant: Variant | Literal["auto"] = "auto",
        device: Device = "auto",
        *,
        spec: ModelSpec = MINILM,
        home: Path | None = None,
        max_batch_size: int = 64,
        max_length: int = 512,
        pad_to_buckets: bool | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        pad_slack: float = 0.25,
        intra_op_threads: int | None = None,
        pool: ModelPool[SessionKey, EncoderSession] | None = None,
        executor: Executor | None = None,
        workers: int = 1,
        cpu_variant: Variant = "fp32",
    ) -> None:
        """``variant="auto"``: fp16 when a GPU is there, else ``cpu_variant`` (also what it switches to when
        onnxruntime falls back from CUDA to the CPU)."""
        from models.build import models_home

        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        MODELS_BY_NAME.setdefault(spec.name, spec)
        self.spec = spec
        self.home = models_home(home).parent
        self.device: Device = device
        self.cpu_variant: Variant = cpu_variant
        self.variant: Variant = self._pick_variant(variant, device, cpu_variant)
        self._auto_variant = variant == "auto"
        self.max_batch_size = max_batch_size
        self.buckets = tuple(buckets)
        self.pad_slack = pad_slack
        self._pad_to_buckets = pad_to_buckets
        self._threads = intra_op_threads or 0
        self._pool = pool or session_pool()
        self._executor = executor
        self.workers = workers
        self._own_executor: ThreadPoolExecutor | None = None
        self.tokenizer = TextTokenizer(spec, max_length=max_length, path=tokenizer_file(spec, self.home))

    @staticmethod
    def _pick_variant(variant: Variant | Literal["auto"], device: Device, cpu_variant: Variant = "fp32") -> Variant:
        if variant != "auto":
            return variant
        gpu = device == "cuda" or (device == "auto" and nvidia_device_present())
        return "fp16" if gpu else cpu_variant

    @property
    def intra_op_threads(self) -> int | None:
        """onnxruntime intra-op threads of this embedder's session (None: onnxruntime's default)."""
        return self._threads or None

    @property
    def dim(self) -> int:
        """Width of an embedding."""
        return self.spec.hidden_size

    @property
    def session(self) -> EncoderSession:
        """The pooled session (loaded, warmed up and built first when needed)."""
        session = self._pool.get(SessionKey(self.spec.name, self.variant, self.device, self._threads, str(self.home)))
        if self._auto_variant and self.variant == "fp16" and not session.report.on_cuda:
            # "auto" picked fp16 for a GPU that onnxruntime could not use: the CPU variant is the right model.
            log.warning("fp16 model fell back to %s; using %s instead", session.provider, self.cpu_variant)
            self.variant = self.cpu_variant
            session = self._pool.get(
                SessionKey(self.spec.name, self.cpu_variant, self.device, self._threads, str(self.home))
            )
        return session

    @property
    def report(self) -> ProviderReport:
        """Which provider really runs this embedder's model."""
        return self.session.report

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised, in the order of ``texts``."""
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """``embed`` and each text's token count (after truncation), from one tokenisation."""
        if isinstance(texts, str):
            raise TypeError("embed takes a list of texts, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out, []
        session = self.session
        ids = self.tokenizer.encode(texts)
        lengths = [len(x) for x in ids]
        buckets = self.buckets if self._use_buckets(session) else None
        for chunk in self.chunks(lengths, tight=buckets is None):
            out[chunk] = session.run(pad_ids([ids[i] for i in chunk], buckets=buckets))
        return out, lengths

    def chunks(self, lengths: Sequence[int], *, tight: bool = True) -> list[list[int]]:
        """Indices grouped for inference: shortest first, at most ``max_batch_size`` each, never mixing length
        buckets (so a short text is not padded to a long one's length). With ``tight`` (padding to the longest,
        the CPU case) a chunk also ends where the next text is longer than its first by more than
        ``max(4, pad_slack * first)`` tokens: on CPU a smaller batch costs little, padding costs its full share."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in order:
            if current:
                first = lengths[current[0]]
                full = len(current) >= self.max_batch_size
                other_bucket = bucket_for(lengths[i], self.buckets) != bucket_for(first, self.buckets)
                too_long = tight and lengths[i] - first > max(4, self.pad_slack * first)
                if full or other_bucket or too_long:
                    chunks.append(current)
                    current = []
            current.append(i)
        if current:
            chunks.append(current)
        return chunks

    def _use_buckets(self, session: EncoderSession) -> bool:
        return session.report.on_cuda if self._pad_to_buckets is None else self._pad_to_buckets

    async def embed_async(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` in the executor, so the event loop stays free."""
        return await asyncio.get_running_loop().run_in_executor(self._get_executor(), self.embed, list(texts))

    async def embed_counted_async(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """``embed_counted`` in the executor (tokenising there too, not on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._get_executor(), self.embed_counted, list(texts))

    def _get_executor(self) -> Executor:
        if self._executor is not None:
            return self._executor
        if self._own_executor is None:
            self._own_executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="embedder")
        return self._own_executor

    def close(self) -> None:
        """Shut down the executor this embedder made (a pooled session stays in its pool)."""
        if self._own_executor is not None:
            self._own_executor.shutdown(wait=True)
            self._own_executor = None
