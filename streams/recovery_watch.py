"""A watchdog for table recovery that stops making progress: re-seek the stalled changelog partition.

The fault (``docs/operations.md``, "A worker stuck restoring a table"): once in about fifty
deployments a worker never finished restoring a changelog partition it was assigned at start-up;
faust logged "No event received for active tp ... since recovery start" every 5 s and the worker's
request partitions stayed paused behind recovery. Nothing new is written to that changelog while
its requests wait, so recovery waits for records that never come.

The suspected mechanism (faust-streaming 0.15.3): recovery (``faust/tables/recovery.py``,
``_restart_recovery``) seeks each active changelog partition to the offset after what the table
already holds, resumes it, and waits until ``_slurp_changelogs`` has applied every record up to
the highwater it read at the start (``active_offsets[tp] == active_highwaters[tp]``). Records reach
``_slurp_changelogs`` only through ``Consumer.getmany`` (``faust/transport/consumer.py``), which
silently drops records aiokafka already returned when their partition is not active at that moment,
the flow was stopped, or the generation changed. aiokafka's fetch position is then past those
records; if they were the last ones below the highwater nothing is ever fetched for that partition
again, and ``_restart_recovery`` waits forever. ``streams.faust_acks`` repairs the same loss for
stream topics by re-seeking in ``perform_seek``, which deliberately leaves changelogs alone (faust
does not call it for them during recovery anyway).

The watchdog, while ``app.tables.recovery.in_recovery`` holds, checks every few seconds each active
changelog partition that still has records to apply (applied offset below the highwater). One that
has received no record for ``stall_after_s`` (counted from the last record it received, the start
of this recovery, or the watchdog's last re-seek of it, whichever is latest) is stalled: the
watchdog seeks the consumer to the offset after the last applied record (the log start when nothing
was applied: faust's ``_build_offsets`` stores ``earliest - 1`` then, and ``-1`` for an empty log),
resumes the partition, logs a WARNING and counts ``aifleet_recovery_reseeks_total{topic}``. A record
fetched twice is harmless: ``_slurp_changelogs`` skips offsets at or below the applied one. After
``max_reseeks`` re-seeks without progress it logs an ERROR and sets
``aifleet_recovery_stuck_partitions{topic}``, and keeps trying; it never stops the process.

faust starts app tasks and timers only after the first recovery completed (``App.on_started``), so
the watchdog's loop is started from the first ``on_partitions_assigned`` signal instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams import metrics

log = logging.getLogger(__name__)

DEFAULT_STALL_AFTER_S = 15.0
DEFAULT_MAX_RESEEKS = 3


@dataclass(frozen=True)
class Stall:
    """An active changelog partition that has records left to apply and has received none for a while."""

    tp: Any  # faust TP (topic, partition)
    applied: int  # last offset applied to the table (-1 or log start - 1: nothing applied)
    highwater: int  # last offset recovery waits for (faust's highwater - 1)
    quiet_s: float  # seconds since it last received a record (or since recovery / the last re-seek)

    @property
    def seek_to(self) -> int:
        return seek_offset(self.applied)


def seek_offset(applied: int | None) -> int:
    """Where to fetch from again: the offset after the last applied one, or 0 when none is known.

    faust's ``_build_offsets`` stores ``earliest - 1`` when nothing is applied (``-1`` for an empty or
    never-compacted log), so ``applied + 1`` is the log start then. (faust's own ``_seek_offsets`` seeks
    to ``applied`` itself, re-reading the last applied record, and below the log start relies on the
    consumer's offset reset; one past it needs neither.)
    """
    if applied is None or applied < 0:
        return 0
    return applied + 1


def find_stalls(
    active_tps: Iterable[Any],
    offsets: Mapping[Any, int | None],
    highwaters: Mapping[Any, int | None],
    quiet_since: Mapping[Any, float],
    *,
    now: float,
    stall_after_s: float,
) -> list[Stall]:
    """The active partitions with records left to apply that have been quiet for ``stall_after_s``.

    ``offsets`` and ``highwaters`` are faust's ``active_offsets`` and ``active_highwaters``; a partition
    either lacks (not built yet) is skipped. ``quiet_since[tp]`` is when it last showed life.
    """
    out: list[Stall] = []
    for tp in active_tps:
        applied, highwater, since = offsets.get(tp), highwaters.get(tp), quiet_since.get(tp)
        if applied is None or highwater is None or since is None or applied >= highwater:
            continue
        quiet = now - since
        if quiet >= stall_after_s:
            out.append(Stall(tp=tp, applied=applied, highwater=highwater, quiet_s=quiet))
    return sorted(out, key=lambda s: (s.tp.topic, s.tp.partition))


@dataclass
class _Attempts:
    count: int = 0
    applied: int = -1  # applied offset at the last re-seek: moving past it is progress
    at: float = 0.0  # when the last re-seek happened


@dataclass
class RecoveryWatchdog:
    """Re-seeks active changelog partitions whose recovery stalled (see the module doc)."""

    app: Any
    stall_after_s: float = DEFAULT_STALL_AFTER_S
    max_reseeks: int = DEFAULT_MAX_RESEEKS
    check_every_s: float | None = None  # default: a third of stall_after_s, between 0.5 and 5 s
    clock: Callable[[], float] = time.monotonic
    _attempts: dict[Any, _Attempts] = field(default_factory=dict)
    _recovery_started_at: float | None = None
    _stuck: set[Any] = field(default_factory=set)
    _task: asyncio.Future[None] | None = None

    @property
    def interval_s(self) -> float:
        if self.check_every_s is not None:
            return self.check_every_s
        return min(5.0, max(0.5, self.stall_after_s / 3))

    def install(self) -> RecoveryWatchdog:
        """Start the check loop with the app's first partition assignment (before recovery can stall)."""

        async def _start(_app: Any, *_: Any, **__: Any) -> None:  # (sender, assigned, signal=...)
            if self._task is None:
                self._task = self.app.add_future(self.run())

        self.app.on_partitions_assigned.connect(_start, weak=False)
        return self

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a watchdog must not take the worker down with it
                log.exception("recovery watchdog check failed")

    async def check(self) -> list[Stall]:
        """One pass: re-seek every stalled active changelog partition; returns the stalls acted on."""
        recovery = self.app.tables.recovery
        if not recovery.in_recovery:
            self._reset()
            return []
        started_at = recovery._recovery_started_at
        if started_at != self._recovery_started_at:  # a new recovery (another rebalance)
            self._reset()
            self._recovery_started_at = started_at
        if started_at is None or self._rebalancing_again(recovery):
            return []
        consumer = self.app.consumer
        assigned = consumer.assignment()
        active = [tp for tp in recovery.active_tps if tp in assigned]
        offsets = recovery.active_offsets
        received = recovery._active_events_received_at
        for tp in active:  # progress since the last re-seek: it worked, start counting afresh
            attempts = self._attempts.get(tp)
            applied = offsets.get(tp)
            if attempts is not None and applied is not None and applied > attempts.applied:
                del self._attempts[tp]
                self._set_stuck(tp, False)
        quiet_since = {
            tp: max(received.get(tp, started_at), started_at, self._attempts.get(tp, _Attempts()).at) for tp in active
        }
        stalls = find_stalls(
            active,
            offsets,
            recovery.active_highwaters,
            quiet_since,
            now=self.clock(),
            stall_after_s=self.stall_after_s,
        )
        return [stall for stall in stalls if await self._reseek(recovery, consumer, stall)]

    def _rebalancing_again(self, recovery: Any) -> bool:
        """A newer generation than the one this recovery is for: faust restarts recovery; leave it to that.

        (``app.rebalancing`` is no help: faust clears it only once recovery has completed.)
        """
        return bool(self.app.consumer_generation_id != recovery._generation_id)

    def _still_stalled(self, recovery: Any, stall: Stall) -> bool:
        """Recovery may have moved on while the watchdog awaited the consumer: then leave the partition be."""
        return bool(
            recovery.in_recovery
            and not self._rebalancing_again(recovery)
            and recovery._recovery_started_at == self._recovery_started_at
            and recovery.active_offsets.get(stall.tp) == stall.applied
        )

    async def _reseek(self, recovery: Any, consumer: Any, stall: Stall) -> bool:
        tp = stall.tp
        try:
            position = await consumer.position(tp)
        except Exception:  # noqa: BLE001 - only for the log line
            position = None
        if not self._still_stalled(recovery, stall):
            return False
        attempts = self._attempts.setdefault(tp, _Attempts())
        if attempts.count >= self.max_reseeks:
            log.error(
                "changelog %s[%d] is still stalled in recovery after %d re-seeks: applied up to offset %d of %d, "
                "no record for %.1f s, fetch position %s; the worker's streams stay paused until it is restored",
                tp.topic,
                tp.partition,
                attempts.count,
                stall.applied,
                stall.highwater,
                stall.quiet_s,
                position,
            )
            self._set_stuck(tp, True)
        log.warning(
            "changelog %s[%d] stalled in recovery: applied up to offset %d of %d, no record for %.1f s, "
            "fetch position %s; re-seeking to %d (re-seek %d)",
            tp.topic,
            tp.partition,
            stall.applied,
            stall.highwater,
            stall.quiet_s,
            position,
            stall.seek_to,
            attempts.count + 1,
        )
        attempts.count += 1
        attempts.applied = stall.applied
        attempts.at = self.clock()
        metrics.record_recovery_reseek(tp.topic)
        await consumer.seek_wait({tp: stall.seek_to})
        if recovery.in_recovery:  # after recovery faust pauses its changelogs again: never undo that
            consumer.resume_partitions({tp})
        return True

    def _set_stuck(self, tp: Any, stuck: bool) -> None:
        before = {t.topic for t in self._stuck}
        if stuck:
            self._stuck.add(tp)
        else:
            self._stuck.discard(tp)
        for topic in before | {t.topic for t in self._stuck}:
            metrics.set_recovery_stuck(topic, sum(1 for t in self._stuck if t.topic == topic))

    def _reset(self) -> None:
        for tp in list(self._stuck):
            self._set_stuck(tp, False)
        self._attempts.clear()
        self._recovery_started_at = None


def install(app: Any, *, stall_after_s: float, max_reseeks: int = DEFAULT_MAX_RESEEKS) -> RecoveryWatchdog:
    """Watch ``app``'s table recovery (see the module doc); returns the watchdog."""
    return RecoveryWatchdog(app, stall_after_s=stall_after_s, max_reseeks=max_reseeks).install()
