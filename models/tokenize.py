"""Tokenisation with Hugging Face ``tokenizers`` from the shipped tokenizer.json.

The shipped file pads every input to a fixed 128 and truncates there; aifleet instead pads to the longest
sequence of a batch (or to a length bucket) and truncates at ``max_length`` (512, the model's positions).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from models.weights import MINILM, ModelSpec, tokenizer_path

DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
PAD_ID = 0


@dataclass(frozen=True)
class Batch:
    """Padded model inputs: ``input_ids`` and ``attention_mask``, both int64 [batch, seq]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(batch, seq)."""
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))

    def feeds(self) -> dict[str, np.ndarray]:
        """The onnxruntime input dict."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def bucket_for(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket that holds ``length`` tokens (the largest bucket when none does)."""
    i = bisect.bisect_left(buckets, length)
    return buckets[min(i, len(buckets) - 1)]


def group_by_bucket(lengths: Sequence[int], buckets: Sequence[int] = DEFAULT_BUCKETS) -> dict[int, list[int]]:
    """Indices of ``lengths`` grouped by the bucket each length falls in (buckets ascending)."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(bucket_for(n, buckets), []).append(i)
    return dict(sorted(groups.items()))


def pad_ids(
    sequences: Sequence[Sequence[int]],
    *,
    buckets: Sequence[int] | None = None,
    pad_id: int = PAD_ID,
) -> Batch:
    """Right-pad id sequences to the longest one, or up to that length's bucket when ``buckets`` is given."""
    if not sequences:
        raise ValueError("cannot pad an empty batch")
    longest = max(len(s) for s in sequences)
    width = bucket_for(longest, buckets) if buckets else longest
    width = max(width, longest)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return Batch(ids, mask)


class TextTokenizer:
    """Turns texts into id sequences (truncated, unpadded) and padded batches."""

    def __init__(self, spec: ModelSpec = MINILM, *, max_length: int = 512, path: Path | None = None) -> None:
        if not 2 <= max_length <= spec.max_position:
            raise ValueError(f"max_length must be in [2, {spec.max_position}], got {max_length}")
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(path or tokenizer_path(spec)))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, with [CLS]/[SEP], truncated at ``max_length``, not padded."""
        encodings: list[Encoding] = self._tok.encode_batch(list(texts))
        return [e.ids for e in encodings]

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts per text (after truncation)."""
        return [len(ids) for ids in self.encode(texts)]

    def __call__(self, texts: Sequence[str], *, buckets: Sequence[int] | None = None) -> Batch:
        """A padded batch: to the longest text, or to its bucket when ``buckets`` is given."""
        return pad_ids(self.encode(texts), buckets=buckets)
