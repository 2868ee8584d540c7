"""Tokenisation: pad to the longest (not the shipped fixed 128), truncate at max_length, length buckets."""

from __future__ import annotations

import numpy as np
import pytest

from models.tokenize import DEFAULT_BUCKETS, TextTokenizer, bucket_for, group_by_bucket, pad_ids


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer()


def test_pads_to_longest_in_batch(tok: TextTokenizer) -> None:
    batch = tok(["hello world", "a much longer sentence than the first one"])
    n_short, n_long = tok.lengths(["hello world", "a much longer sentence than the first one"])
    assert batch.shape == (2, n_long)  # not the shipped fixed 128
    assert batch.attention_mask[0].sum() == n_short and batch.attention_mask[1].sum() == n_long
    assert (batch.input_ids[0, n_short:] == 0).all()
    assert batch.input_ids.dtype == np.int64 and batch.attention_mask.dtype == np.int64


def test_special_tokens_and_lowercasing(tok: TextTokenizer) -> None:
    (ids,) = tok.encode(["Hello"])
    (lower,) = tok.encode(["hello"])
    assert ids[0] == 101 and ids[-1] == 102 and ids == lower


def test_truncates_at_max_length() -> None:
    long_text = "word " * 1000
    assert TextTokenizer().lengths([long_text]) == [512]
    short = TextTokenizer(max_length=64)
    (ids,) = short.encode([long_text])
    assert len(ids) == 64 and ids[-1] == 102
    with pytest.raises(ValueError):
        TextTokenizer(max_length=513)


def test_bucket_for_picks_smallest_fitting_bucket() -> None:
    assert [bucket_for(n) for n in (1, 16, 17, 64, 65, 512, 600)] == [16, 16, 32, 64, 128, 512, 512]


def test_bucketed_padding(tok: TextTokenizer) -> None:
    batch = tok(["short one", "another short text"], buckets=DEFAULT_BUCKETS)
    assert batch.shape[1] == 16
    ids = [[101] + [7] * 40 + [102]]
    assert pad_ids(ids, buckets=DEFAULT_BUCKETS).shape == (1, 64)
    assert pad_ids(ids).shape == (1, 42)


def test_group_by_bucket() -> None:
    groups = group_by_bucket([5, 100, 20, 16, 300])
    assert groups == {16: [0, 3], 32: [2], 128: [1], 512: [4]}


def test_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError):
        pad_ids([])
