"""The semantic cache's index: per scope and namespace, unit vectors of cached prompts.

A namespace groups the requests whose answers are interchangeable apart from wording (same scope,
model class and output parameters), so a paraphrase is only matched with prompts that would have
been answered by the same kind of model under the same parameters. Search is one matrix-vector
product over the namespace (exact cosine, no approximation): at the sizes one worker keeps
(``semantic_max_per_scope``), that is well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streams.cache.keys import scope_of_key


@dataclass
class _Space:
    keys: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


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
        space = self._spaces.setdefault(namespace, _Space())
        v = unit(vector)[None, :]
        if key in space.keys:
            space.vectors[space.keys.index(key)] = v[0]
            return
        space.keys.append(key)
        space.vectors = v if space.vectors.size == 0 else np.vstack([space.vectors, v])
        if len(space.keys) > self._max:
            drop = len(space.keys) - self._max
            space.keys = space.keys[drop:]
            space.vectors = space.vectors[drop:]

    def search(self, namespace: str, vector: np.ndarray | list[float]) -> Match | None:
        """The best match at or above the threshold, if any."""
        space = self._spaces.get(namespace)
        if space is None or not space.keys:
            return None
        scores = space.vectors @ unit(vector)
        best = int(np.argmax(scores))
        score = float(scores[best])
        return Match(space.keys[best], score) if score >= self.threshold else None

    def remove(self, namespace: str, key: str) -> None:
        space = self._spaces.get(namespace)
        if space is None or key not in space.keys:
            return
        i = space.keys.index(key)
        del space.keys[i]
        space.vectors = np.delete(space.vectors, i, axis=0)

    def drop_scope(self, scope: str) -> None:
        """Remove every namespace of ``scope`` ('*': all)."""
        for ns in list(self._spaces):
            if scope == "*" or scope_of_key(ns) == scope:
                del self._spaces[ns]
        self._loaded.discard(scope)

    def size(self, namespace: str) -> int:
        space = self._spaces.get(namespace)
        return len(space.keys) if space else 0
