"""Precision and hit rate of the semantic cache on the labelled pairs, at one threshold or a sweep.

The prompts are embedded exactly as the cache embeds them (``semantic_text`` of a one-message user
request) with the model the workers use, so the figures are the cache's, not a proxy's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from schemas.request import Message, Request
from streams.cache.keys import semantic_text
from streams.cache.labelled_pairs import NON_PARAPHRASES, PARAPHRASES
from streams.cache.semantic import unit


@dataclass(frozen=True, slots=True)
class Evaluation:
    threshold: float
    precision: float
    hit_rate: float
    """Share of paraphrase pairs the cache answers (recall)."""
    false_hits: int
    pairs: int


def _as_cached_text(prompt: str) -> str:
    req = Request(request_id="eval", tenant="eval", messages=[Message(role="user", content=prompt)])
    return semantic_text(req)


@lru_cache(maxsize=1)
def pair_scores() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Cosine similarity of every paraphrase pair and every non-paraphrase pair."""
    from streams.providers.local import shared_embedder

    embedder = shared_embedder()

    def scores(pairs: tuple[tuple[str, str], ...]) -> tuple[float, ...]:
        a = embedder.embed([_as_cached_text(x) for x, _ in pairs])
        b = embedder.embed([_as_cached_text(y) for _, y in pairs])
        return tuple(float(np.dot(unit(u), unit(v))) for u, v in zip(a, b, strict=True))

    return scores(PARAPHRASES), scores(NON_PARAPHRASES)


def evaluate(threshold: float) -> Evaluation:
    positives, negatives = pair_scores()
    tp = sum(1 for s in positives if s >= threshold)
    fp = sum(1 for s in negatives if s >= threshold)
    precision = tp / (tp + fp) if tp + fp else 1.0
    return Evaluation(
        threshold=threshold,
        precision=round(precision, 4),
        hit_rate=round(tp / len(positives), 4),
        false_hits=fp,
        pairs=len(positives) + len(negatives),
    )


def sweep(thresholds: tuple[float, ...] = (0.8, 0.85, 0.875, 0.9, 0.925, 0.95)) -> list[Evaluation]:
    return [evaluate(t) for t in thresholds]
