"""A pool of loaded models: load on first use, warm up, evict least-recently-used under a memory budget.

Sizes are estimates from artefact file sizes (weights dominate an encoder's resident memory). The pool is
thread-safe: ``Embedder.embed_async`` calls it from executor threads. Two threads asking for the same
missing model load it once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolStats:
    """Counters of a pool."""

    loaded: int
    used_bytes: int
    budget_bytes: int
    hits: int
    loads: int
    evictions: int


class ModelPool(Generic[K, V]):
    """LRU pool of models keyed by ``K``.

    ``load(key)`` makes a model, ``size_of(key)`` estimates its bytes *before* loading (so room is made
    first), ``warm_up(model)`` runs once after loading, ``release(model)`` runs on eviction. A model larger
    than the whole budget is still loaded, alone, with a warning.
    """

    def __init__(
        self,
        budget_bytes: int,
        load: Callable[[K], V],
        size_of: Callable[[K], int],
        *,
        warm_up: Callable[[V], None] | None = None,
        release: Callable[[V], None] | None = None,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.budget_bytes = budget_bytes
        self._load, self._size_of, self._warm_up, self._release = load, size_of, warm_up, release
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._loading: dict[K, threading.Lock] = {}
        self._reserved: dict[K, int] = {}  # sizes of the loads in flight: they count against the budget
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._hits = self._loads = self._evictions = 0

    def get(self, key: K) -> V:
        """The model for ``key``, loading (and warming up) on first use; marks it most recently used."""
        with self._lock:
            hit = self._lookup(key)
            if hit is not None:
                return hit[0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._lookup(key)
                if hit is not None:
                    return hit[0]
            try:
                size = int(self._size_of(key))
                evicted: list[V] = []
                with self._room:
                    # make room, counting other loads in flight; when only they stand in the way, wait for them
                    # to land (then they can be evicted) rather than load past the budget side by side
                    while True:
                        evicted += self._make_room(size)
                        if self._used() + size <= self.budget_bytes or not self._reserved:
                            break
                        self._room.wait()
                    self._reserved[key] = size
                self._release_all(evicted)
                model = self._load(key)
                if self._warm_up is not None:
                    self._warm_up(model)
                with self._lock:
                    self._reserved.pop(key, None)
                    self._entries[key] = (model, size)
                    self._loads += 1
                    evicted = self._make_room(0, keep=key)
                self._release_all(evicted)
            finally:
                with self._room:
                    self._reserved.pop(key, None)
                    self._loading.pop(key, None)
                    self._room.notify_all()
            if size > self.budget_bytes:
                log.warning("model %r (%d bytes) alone exceeds the budget (%d bytes)", key, size, self.budget_bytes)
            return model

    def _lookup(self, key: K) -> tuple[V, int] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self._hits += 1
        return entry

    def _make_room(self, incoming: int, keep: K | None = None) -> list[V]:
        """Pop least-recently-used entries until ``incoming`` more bytes fit (never ``keep``)."""
        evicted: list[V] = []
        for key in list(self._entries):
            if self._used() + incoming <= self.budget_bytes:
                break
            if key == keep:
                continue
            model, _ = self._entries.pop(key)
            self._evictions += 1
            evicted.append(model)
            log.info("evicted model %r from the pool", key)
        return evicted

    def _release_all(self, models: list[V]) -> None:
        if self._release is not None:
            for m in models:
                self._release(m)

    def _used(self) -> int:
        return sum(size for _, size in self._entries.values()) + sum(self._reserved.values())

    def evict(self, key: K) -> bool:
        """Drop one model now; False when it was not loaded."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._evictions += 1
        if entry is None:
            return False
        self._release_all([entry[0]])
        return True

    def clear(self) -> None:
        """Drop every model."""
        with self._lock:
            models = [m for m, _ in self._entries.values()]
            self._evictions += len(models)
            self._entries.clear()
        self._release_all(models)

    def keys(self) -> list[K]:
        """Loaded keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def used_bytes(self) -> int:
        """Estimated bytes of the loaded models."""
        with self._lock:
            return self._used()

    def stats(self) -> PoolStats:
        """A snapshot of the counters."""
        with self._lock:
            return PoolStats(
                len(self._entries), self._used(), self.budget_bytes, self._hits, self._loads, self._evictions
            )
