"""The semantic cache's default threshold on the labelled pairs, with the model the workers load."""

from __future__ import annotations

from streams.cache.evaluate import evaluate, pair_scores
from streams.cache.labelled_pairs import NON_PARAPHRASES, PARAPHRASES
from streams.settings import CacheSettings


def test_labelled_set_is_balanced_and_has_no_duplicate_pairs() -> None:
    assert len(PARAPHRASES) >= 40 and len(NON_PARAPHRASES) >= 40
    assert len(set(PARAPHRASES)) == len(PARAPHRASES) and len(set(NON_PARAPHRASES)) == len(NON_PARAPHRASES)
    assert not set(PARAPHRASES) & set(NON_PARAPHRASES)


def test_default_threshold_has_precision_of_at_least_0_95() -> None:
    result = evaluate(CacheSettings().semantic_threshold)
    print(f"\nsemantic cache at {result.threshold}: precision {result.precision}, hit rate {result.hit_rate}")
    assert result.precision >= 0.95
    assert result.hit_rate >= 0.5  # a threshold nothing passes would be "precise" and useless


def test_paraphrases_score_higher_than_unrelated_pairs() -> None:
    positives, negatives = pair_scores()
    unrelated = negatives[-10:]  # the last ten pairs of the set are unrelated topics
    assert min(positives) > max(unrelated)
