"""At-least-once repairs to faust-streaming's offset bookkeeping, applied before any app starts.

``streams.windowed`` acks a record only once its handler finished and what it produced is on the
broker; faust commits, per partition, what it computes from those acks. Around a rebalance faust
(0.15.3, ``faust/transport/consumer.py``) could commit past a record no handler ever saw:

* ``Consumer._new_offset`` commits the first run of acked offsets without checking that it starts
  at the committed offset: with no committed offset known (a partition the group never committed,
  or one whose bookkeeping ``on_partitions_revoked`` had just dropped) any run is taken, and with
  one known its test ``min(acked) - committed > 1`` lets a run start one past it. Its gap filling
  (``_add_gap``, fed by jumps in the read offset, which seeks also cause) marks offsets acked that
  no handler acked, the record being delivered included.
* ``Consumer.getmany`` silently discards records aiokafka already returned (a partition paused
  while the fetch ran, the flow stopped, a new generation), so aiokafka's position is past them;
  ``perform_seek`` then re-seeks only partitions with a committed offset above 0, so on a
  partition the group never committed those records are never fetched again.
* ``on_partitions_revoked`` drops the revoked partitions' acks and committed offsets *before* the
  app waits for in-flight records and commits, so that commit works without them.
* ``FlowControlEvent.resume`` (mode) empties every stream buffer even when the flow was already
  running; recovery calls it again after resuming the partitions, dropping records of the current
  generation already handed to a stream.

Seen in ``tests/integration/test_worker_crash.py`` (with ``perform_seek`` slowed to widen the window):
a partition with no committed offset whose first 40 records were never delivered (aiokafka's
position was already at 40) was committed past from offset 40, and a never-delivered record at a
partition's committed offset (216) was committed past by the off-by-one.

The repairs: for the topics ``register``-ed by ``process_windowed`` a commit only advances over a
contiguous run of acked offsets starting exactly at the known committed offset (nothing is
committed while that offset is unknown, and gaps are never filled); ``perform_seek`` records the
committed offset of every partition (the log start where the group has none, as
``auto_offset_reset=earliest`` reads from there, or where retention deleted past it) and seeks every
partition to it, which also puts
back anything ``getmany`` discarded; a revoke commits before it forgets; and resuming a running flow
keeps the buffers. An ack is a fact (the handler finished), so acks from an earlier assignment are
kept: they can only complete a contiguous run, never skip a record.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_strict_topics: set[str] = set()
_applied = False


def register(topics: Iterable[str]) -> None:
    """Commit these topics' offsets only over records their handlers acked (see the module doc)."""
    _strict_topics.update(topics)


def is_strict(topic: str) -> bool:
    return topic in _strict_topics


def commit_point(acked: list[int], committed: int | None) -> tuple[int | None, int]:
    """Where a partition's commit may move, from its sorted acked offsets and its committed offset.

    Returns ``(offset, consumed)``: the offset to commit (``None`` when it cannot move) and how many
    leading entries of ``acked`` are settled by it (below ``committed``, or part of the committed run).
    """
    if committed is None:
        return None, 0
    consumed = 0
    while consumed < len(acked) and acked[consumed] < committed:
        consumed += 1  # already committed (an ack that arrived late, or a re-delivered record)
    end = committed
    while consumed < len(acked) and acked[consumed] <= end:
        if acked[consumed] == end:
            end += 1
        consumed += 1
    return (end if end > committed else None), consumed


def apply() -> None:
    """Patch faust's consumer (and mode's flow control) as described in the module doc; idempotent."""
    global _applied  # noqa: PLW0603 - a process-wide patch, applied once
    if _applied:
        return
    from faust.transport import consumer as fc
    from mode import Service
    from mode.utils.queues import FlowControlEvent

    Consumer = fc.Consumer
    original_new_offset = Consumer._new_offset
    original_add_gap = Consumer._add_gap

    def _new_offset(self: Any, tp: Any) -> int | None:
        if not is_strict(tp.topic):
            return original_new_offset(self, tp)
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        offset, consumed = commit_point(acked, self._committed_offset[tp])
        if consumed:
            self._acked_index[tp].difference_update(acked[:consumed])
            del acked[:consumed]
        return offset

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        if is_strict(tp.topic):
            return  # a jump in the read offset is not evidence that the offsets in between hold no record
        await original_add_gap(self, tp, offset_from, offset_to)

    async def perform_seek(self: Any) -> None:
        committed = {fc.ensure_TP(tp): off for tp, off in (await self.seek_to_committed()).items()}
        known = {tp: off for tp, off in committed.items() if off is not None and off >= 0}
        # Stream partitions only: table changelogs are read (standbys) from where recovery put them.
        streams = [tp for tp in committed if not self._is_changelog_tp(tp)]
        starts = await self.earliest_offsets(*streams) if streams else {}
        earliest = {fc.ensure_TP(tp): off for tp, off in starts.items() if off is not None and off >= 0}
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            known.update({tp: earliest[tp] for tp in streams if tp not in known and tp in earliest})
        # Retention deleted records the group had not committed past (a long stop): no record will ever
        # be acked below the log start, so a commit held at the old offset would never move again.
        behind = {tp: earliest[tp] for tp in streams if tp in known and tp in earliest and known[tp] < earliest[tp]}
        known.update(behind)
        # aiokafka's seek_to_committed leaves a partition whose committed offset is 0 or missing where
        # its fetch position is, which may be past records getmany discarded: seek those too.
        unsought = {tp: known[tp] for tp in streams if tp in known and (not committed[tp] or tp in behind)}
        if unsought:
            await self.seek_wait(unsought)
        self._read_offset.update({tp: known.get(tp) for tp in committed})
        self._committed_offset.update(known)

    @Service.transitions_to(fc.CONSUMER_PARTITIONS_REVOKED)
    async def on_partitions_revoked(self: Any, revoked: set[Any]) -> None:
        span = self.app._start_span_from_rebalancing("on_partitions_revoked")
        trace = fc.traced_from_parent_span(span)
        with span:
            if self._active_partitions is not None:
                self._active_partitions.difference_update(revoked)
            self._paused_partitions.difference_update(revoked)
            try:
                # the app waits for in-flight records and commits here: with the acks still known
                await trace(self._on_partitions_revoked, partitions=revoked)(revoked)
            finally:
                for tp in revoked:
                    self._gap.pop(tp, None)
                    self._acked.pop(tp, None)
                    self._acked_index.pop(tp, None)
                    self._read_offset.pop(tp, None)
                    self._committed_offset.pop(tp, None)

    def resume(self: Any) -> None:
        suspended = self._suspend.is_set()
        self._suspend.clear()
        self._resume.set()
        if suspended:
            self.clear()  # what was buffered before the suspension is stale; a running flow's is not

    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
    Consumer.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]
    FlowControlEvent.resume = resume  # type: ignore[method-assign]
    _applied = True
