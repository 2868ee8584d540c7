"""The semantic cache's index: per scope and namespace, unit vectors of cached prompts.

A namespace groups the requests whose answers are interchangeable apart from wording (same scope,
model class and output parameters), so a paraphrase is only matched with prompts that would have
been answered by the same kind of model under the same parameters. Search is one matrix-vector
product over the namespace (exact cosine, no approximation): at the sizes one worker keeps
(``semantic_max_per_scope``), that is well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.cache.keys import scope_of_key


class _Space:
    """One namespace's vectors: rows of a buffer that doubles up to ``limit``, then a ring over it.

    Adding and removing are O(1) amortised (the search itself is one matrix-vector product). Past
    ``limit`` a new vector overwrites the oldest slot; a removed vector leaves a zero row (cosine 0,
    below any threshold) until the ring comes round to it.
    """

    __slots__ = ("keys", "limit", "next", "slot", "vectors")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: list[str | None] = []
        self.slot: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.next = 0  # once full: the slot to overwrite (the oldest)

    def put(self, key: str, v: np.ndarray) -> None:
        if key in self.slot:
            self.vectors[self.slot[key]] = v
            return
        if self.vectors.shape[1] != v.size:  # first vector (or a model of another width): start over
            self.keys, self.slot, self.next = [], {}, 0
            self.vectors = np.zeros((min(64, self.limit), v.size), dtype=np.float32)
        n = len(self.keys)
        if n < self.limit:
            if n == len(self.vectors):
                grown = np.zeros((min(2 * n, self.limit), v.size), dtype=np.float32)
                grown[:n] = self.vectors
                self.vectors = grown
            i = n
            self.keys.append(key)
        else:
            i = self.next
            self.next = (i + 1) % self.limit
            old = self.keys[i]
            if old is not None:
                del self.slot[old]
            self.keys[i] = key
        self.vectors[i] = v
        self.slot[key] = i

    def drop(self, key: str) -> None:
        i = self.slot.pop(key, None)
        if i is not None:
            self.keys[i] = None
            self.vectors[i] = 0.0

    def best(self, v: np.ndarray) -> tuple[str, float] | None:
        n = len(self.keys)
        if not self.slot or self.vectors.shape[1] != v.size:
            return None
        scores = self.vectors[:n] @ v
        i = int(np.argmax(scores))
        key = self.keys[i]
        return (key, float(scores[i])) if key is not None else None


@dataclass(frozen=True, slots=True)
class Match:
    """The closest cached prompt and its cosine similarity."""

    key: str
    score: float


def unit(vector: np.ndarray | list[float]) -> np.ndarray:
    """``vector`` scaled to length 1 (float32)."""
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class SemanticIndex:
    """Vectors by namespace; the oldest are dropped past ``max_per_namespace``."""

    def __init__(self, *, threshold: float, max_per_namespace: int) -> None:
        self.threshold = threshold
        self._max = max_per_namespace
        self._spaces: dict[str, _Space] = {}
        self._loaded: set[str] = set()

    def loaded(self, scope: str) -> bool:
        """Whether this scope's stored entries were read into the index since the last reset."""
        return scope in self._loaded

    def mark_loaded(self, scope: str) -> None:
        self._loaded.add(scope)

    def reset(self) -> None:
        """Forget everything (after a rebalance the stored entries are read again on first use)."""
        self._spaces.clear()
        self._loaded.clear()

    def add(self, namespace: str, key: str, vector: np.ndarray | list[float]) -> None:
        """Index ``key``'s vector in ``namespace`` (replacing its old one); past the limit the oldest goes."""
        self._spaces.setdefault(namespace, _Space(self._max)).put(key, unit(vector))

    def search(self, namespace: str, vector: np.ndarray | list[float]) -> Match | None:
        """The best match at or above the threshold, if any."""
        space = self._spaces.get(namespace)
        best = space.best(unit(vector)) if space is not None else None
        if best is None or best[1] < self.threshold:
            return None
        return Match(*best)

    def remove(self, namespace: str, key: str) -> None:
        space = self._spaces.get(namespace)
        if space is not None:
            space.drop(key)

    def drop_scope(self, scope: str) -> None:
        """Remove every namespace of ``scope`` ('*': all)."""
        for ns in list(self._spaces):
            if scope == "*" or scope_of_key(ns) == scope:
                del self._spaces[ns]
        self._loaded.discard(scope)

    def size(self, namespace: str) -> int:
        space = self._spaces.get(namespace)
        return len(space.slot) if space else 0
