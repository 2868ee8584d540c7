"""Split a provider's cluster-wide limits (rpm, tpm, burst) across workers, deterministically.

Each limit is divided over the request topic's partitions: partition ``i`` of ``n`` gets
``limit // n`` plus one unit when ``i < limit % n``. The parts sum to exactly ``limit``, and
every worker computes the same parts, so however the partitions are assigned, the shares of all
workers together never exceed the provider's limit. A worker's share is the sum over the partitions
it owns; recompute it (``ProviderLimiter.resize``) when a rebalance changes them.

A partition whose share of a limit is 0 (a limit smaller than the partition count) cannot call that
provider on its own; ``share_for`` reports it as 0, and the limiter for a 0 share should not be built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streams.catalog import ProviderSpec


def split(limit: int, parts: int) -> list[int]:
    """``limit`` divided into ``parts`` integers that differ by at most one and sum to ``limit``."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    if limit < 0:
        raise ValueError("limit must not be negative")
    base, extra = divmod(limit, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def share_for(limit: int, parts: int, owned: Iterable[int]) -> int:
    """The part of ``limit`` that belongs to the owned partition indexes (each counted once)."""
    shares = split(limit, parts)
    indexes = set(owned)
    bad = [i for i in indexes if not 0 <= i < parts]
    if bad:
        raise ValueError(f"partition indexes {sorted(bad)} are outside 0..{parts - 1}")
    return sum(shares[i] for i in indexes)


@dataclass(frozen=True, slots=True)
class LimitShare:
    """One worker's share of one provider's limits."""

    rpm: int
    tpm: int
    burst: int

    @property
    def usable(self) -> bool:
        """Whether this share can make any call at all."""
        return self.rpm > 0 and self.tpm > 0 and self.burst > 0


def provider_share(spec: ProviderSpec, parts: int, owned: Iterable[int]) -> LimitShare:
    """This worker's share of ``spec``'s rpm, tpm and burst, given the partitions it owns."""
    indexes = list(owned)
    return LimitShare(
        rpm=share_for(spec.rpm, parts, indexes),
        tpm=share_for(spec.tpm, parts, indexes),
        burst=share_for(spec.burst, parts, indexes),
    )
