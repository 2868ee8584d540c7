"""Deterministic answers and token counts: the same prompt always gets the same reply."""

from __future__ import annotations

import hashlib
import math

_WORDS = [
    "stream",
    "kafka",
    "token",
    "latency",
    "cache",
    "provider",
    "answer",
    "route",
    "budget",
    "tenant",
    "model",
    "partition",
    "offset",
    "batch",
    "window",
    "embed",
    "vector",
    "cost",
    "quality",
    "fallback",
    "circuit",
    "replica",
    "broker",
    "worker",
]


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: about four characters a token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def answer_for(model: str, prompt: str, max_tokens: int | None) -> str:
    """A reply that depends only on the model and the prompt, of bounded length."""
    digest = hashlib.sha256(f"{model}\x00{prompt}".encode()).digest()
    n_words = 8 + digest[0] % 24
    if max_tokens is not None:
        n_words = max(1, min(n_words, max_tokens))
    words = [_WORDS[digest[(i % 31) + 1] % len(_WORDS)] for i in range(n_words)]
    return "Echo: " + " ".join(words) + "."


def embedding_for(text: str, dims: int = 8) -> list[float]:
    """A deterministic unit vector for a text."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dims]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def split_stream(text: str) -> list[str]:
    """Split an answer into the chunks a streaming reply sends (one word each, spaces kept)."""
    parts = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(parts)]
