"""streams.faust_acks: faust never commits past a record no handler acked, around rebalances included.

The cases are the ones seen in the kill-then-replace crash test: a partition whose group never
committed lost records that a fetch discarded, and another lost the record at its committed offset.
Each test drives the patched faust method on a stand-in consumer carrying only the state it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams import faust_acks, windowed

faust_acks.apply()

STRICT = "t.requests"
OTHER = "t.usage"
faust_acks.register([STRICT])


class _Diag:
    def set_flag(self, flag: str) -> None: ...

    def unset_flag(self, flag: str) -> None: ...


class _App:
    def __init__(self, auto_offset_reset: str = "earliest") -> None:
        self.conf = type("Conf", (), {"consumer_auto_offset_reset": auto_offset_reset})()

    def _start_span_from_rebalancing(self, name: str) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


class FakeConsumer:
    """The bookkeeping faust's ``Consumer`` keeps per partition, and the broker calls perform_seek makes."""

    def __init__(self, *, committed: dict[TP, int | None] | None = None, earliest: dict[TP, int] | None = None) -> None:
        self.app = _App()
        self.diag = _Diag()
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._active_partitions: set[TP] | None = set()
        self._paused_partitions: set[TP] = set()
        self.broker_committed = committed or {}
        self.broker_earliest = earliest or {}
        self.sought: dict[TP, int] = {}
        self.seen_by_app: dict[str, Any] = {}

    def acked(self, tp: TP, *offsets: int) -> None:
        for o in offsets:
            self._acked[tp].append(o)
            self._acked_index[tp].add(o)

    # what faust's perform_seek calls on the broker
    async def seek_to_committed(self) -> dict[TP, int | None]:
        for tp, off in self.broker_committed.items():
            if off:  # like aiokafka: only a committed offset above 0 moves the position
                self.sought[tp] = off
        return dict(self.broker_committed)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.broker_earliest.get(tp, 0) for tp in tps}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.sought.update(partitions)

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    # the app's revoke callback: drains in-flight records and commits
    async def _on_partitions_revoked(self, revoked: set[TP]) -> None:
        tp = next(iter(revoked))
        self.seen_by_app = {"acked": list(self._acked[tp]), "committed": self._committed_offset[tp]}


def new_offset(consumer: FakeConsumer, tp: TP) -> int | None:
    return Consumer._new_offset(consumer, tp)  # type: ignore[arg-type]


P3 = TP(STRICT, 3)


def test_the_record_at_the_committed_offset_holds_the_commit_back() -> None:
    # faust's own test was min(acked) - committed > 1: it committed 333 here, past record 216
    c = FakeConsumer()
    c._committed_offset[P3] = 216
    c.acked(P3, *range(217, 333))
    assert new_offset(c, P3) is None
    c.acked(P3, 216)
    assert new_offset(c, P3) == 333
    assert c._acked[P3] == [] and c._acked_index[P3] == set()


def test_nothing_is_committed_while_the_committed_offset_is_unknown() -> None:
    # a partition the group never committed: faust committed the first acked run, 40..81, past 0..39
    c = FakeConsumer()
    c.acked(P3, *range(40, 82))
    assert new_offset(c, P3) is None
    assert sorted(c._acked[P3]) == list(range(40, 82))  # kept for when the offset is known


def test_a_commit_stops_at_the_first_unacked_offset_and_keeps_the_rest() -> None:
    c = FakeConsumer()
    c._committed_offset[P3] = 10
    c.acked(P3, 12, 10, 11, 14, 13, 16)
    assert new_offset(c, P3) == 15
    assert c._acked[P3] == [16]
    assert c._acked_index[P3] == {16}


def test_acks_below_the_committed_offset_are_settled_not_counted() -> None:
    # late acks from before a rebalance, or re-delivered records, below what is committed already
    c = FakeConsumer()
    c._committed_offset[P3] = 100
    c.acked(P3, 97, 98, 101)
    assert new_offset(c, P3) is None
    assert c._acked[P3] == [101]
    c.acked(P3, 100)
    assert new_offset(c, P3) == 102


def test_gaps_are_never_filled_for_a_windowed_topic() -> None:
    # faust recorded the jump 215 -> 218 as the gap [216, 218] (the record being delivered included)
    # and counted those offsets as acked as soon as anything past them was
    c = FakeConsumer()
    c._committed_offset[P3] = 216
    asyncio.run(Consumer._add_gap(c, P3, 216, 218))  # type: ignore[arg-type]
    assert not c._gap[P3]
    c._gap[P3].addi(216, 219)  # even a gap recorded some other way is not taken as acks
    c.acked(P3, 219, 220)
    assert new_offset(c, P3) is None


def test_other_topics_keep_fausts_commit_rules() -> None:
    tp = TP(OTHER, 0)
    c = FakeConsumer()
    c.acked(tp, 5, 6)
    assert new_offset(c, tp) == 7  # faust: no committed offset known, first run taken


def test_commit_point_examples() -> None:
    assert faust_acks.commit_point([], 3) == (None, 0)
    assert faust_acks.commit_point([3, 4, 5], None) == (None, 0)
    assert faust_acks.commit_point([3, 4, 5], 3) == (6, 3)
    assert faust_acks.commit_point([1, 2, 4, 5], 3) == (None, 2)
    assert faust_acks.commit_point([3, 3, 4, 6], 3) == (5, 3)


def test_perform_seek_knows_and_seeks_every_partitions_start() -> None:
    fresh, zero, moved = TP(STRICT, 0), TP(STRICT, 1), TP(STRICT, 2)
    c = FakeConsumer(committed={fresh: None, zero: 0, moved: 216}, earliest={fresh: 0})
    asyncio.run(Consumer.perform_seek(c))  # type: ignore[arg-type]
    # faust left fresh and zero without a committed offset and at whatever position the fetcher had
    # reached, past records a discarded fetch had returned
    assert c._committed_offset == {fresh: 0, zero: 0, moved: 216}
    assert c.sought == {fresh: 0, zero: 0, moved: 216}
    assert c._read_offset == {fresh: 0, zero: 0, moved: 216}


def test_perform_seek_uses_the_log_start_where_the_group_never_committed() -> None:
    tp = TP(STRICT, 0)
    c = FakeConsumer(committed={tp: None}, earliest={tp: 1200})  # older records deleted by retention
    asyncio.run(Consumer.perform_seek(c))  # type: ignore[arg-type]
    assert c._committed_offset[tp] == 1200
    assert c.sought == {tp: 1200}


def test_perform_seek_moves_a_commit_that_retention_left_behind_the_log_start() -> None:
    tp, fine = TP(STRICT, 0), TP(STRICT, 1)
    c = FakeConsumer(committed={tp: 100, fine: 700}, earliest={tp: 500, fine: 600})
    asyncio.run(Consumer.perform_seek(c))  # type: ignore[arg-type]
    assert c._committed_offset == {tp: 500, fine: 700}
    assert c.sought[tp] == 500
    c.acked(tp, 500, 501)
    assert new_offset(c, tp) == 502  # no record below 500 will ever be acked: the commit can move


def test_perform_seek_leaves_table_changelogs_where_recovery_put_them() -> None:
    changelog = TP("app-quota-changelog", 0)
    c = FakeConsumer(committed={changelog: None}, earliest={changelog: 0})
    asyncio.run(Consumer.perform_seek(c))  # type: ignore[arg-type]
    assert c.sought == {}
    assert c._committed_offset[changelog] is None


def test_a_revoke_commits_with_the_acks_before_it_forgets_them() -> None:
    c = FakeConsumer()
    c._committed_offset[P3] = 80
    c.acked(P3, *range(80, 114))
    asyncio.run(Consumer.on_partitions_revoked(c, {P3}))  # type: ignore[arg-type]
    # faust dropped these first, so the commit the app makes on revoke had no committed offset to
    # start from and none of the acks since the last commit
    assert c.seen_by_app == {"acked": list(range(80, 114)), "committed": 80}
    assert P3 not in c._acked and P3 not in c._committed_offset


def test_resuming_a_running_flow_keeps_the_buffered_records() -> None:
    async def scenario() -> tuple[int, int]:
        flow = FlowControlEvent(initially_suspended=False)
        queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        queue.put_nowait(1)
        flow.resume()  # recovery resumes again after it resumed the partitions: not a new start
        kept = queue.qsize()
        flow.suspend()
        flow.resume()  # a real resumption: what was buffered before it is stale
        return kept, queue.qsize()

    assert asyncio.run(scenario()) == (1, 0)


def test_process_windowed_registers_its_topics() -> None:
    class Channel:
        topics = ("t.routed",)

    class Stream:
        channel = Channel()

        def noack(self) -> Stream:
            return self

        async def events(self) -> Any:
            return
            yield

    async def handler(_event: Any) -> None: ...

    asyncio.run(windowed.process_windowed(Stream(), handler, max_in_flight=2))
    assert faust_acks.is_strict("t.routed")


@pytest.fixture(autouse=True)
def _no_leaked_registrations() -> Any:
    before = set(faust_acks._strict_topics)
    yield
    faust_acks._strict_topics.intersection_update(before | {STRICT})


def test_faust_producers_are_idempotent_outside_transactions_too() -> None:
    from types import SimpleNamespace

    from faust.transport.drivers import aiokafka as driver

    from streams import faust_tuning

    faust_tuning.apply()
    extra = driver.Producer._settings_extra(SimpleNamespace(app=SimpleNamespace(in_transaction=False)))  # type: ignore[arg-type]
    assert extra["enable_idempotence"] is True and extra["acks"] == "all"
