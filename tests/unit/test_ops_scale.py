"""streams.ops.scale.advise: targets, steps, cooldown, bounds and reasons."""

from __future__ import annotations

import pytest

from streams.ops.scale import ScalePolicy, advise

NOW = 1_000_000.0


def test_idle_group_holds_at_one() -> None:
    a = advise(0, 5.0, 0.2, 1, 4, None, NOW)
    assert (a.action, a.workers, a.desired_workers) == ("hold", 1, 1)
    assert a.needs == {"lag": 1, "cpu": 1}
    assert "within targets" in a.reason


def test_lag_over_target_scales_up_by_at_most_the_factor() -> None:
    a = advise(250, None, None, 2, 8, None, NOW)  # needs ceil(250/100) = 3; step cap ceil(2*1.5) = 3
    assert (a.action, a.workers) == ("scale_up", 3)
    assert a.needs["lag"] == 3
    assert a.reason == "scale up 2 -> 3 (lag)"
    b = advise(2000, None, None, 2, 32, None, NOW)  # needs 20; one change goes to 3
    assert (b.action, b.workers, b.desired_workers) == ("scale_up", 3, 3)
    assert any("step limited to x1.5" in r for r in b.reasons)


def test_one_worker_always_steps_by_at_least_one() -> None:
    a = advise(150, None, None, 1, 4, None, NOW)
    assert (a.action, a.workers) == ("scale_up", 2)


def test_never_more_workers_than_partitions() -> None:
    a = advise(10_000, None, None, 4, 4, None, NOW)
    assert (a.action, a.workers, a.max_workers) == ("hold", 4, 4)
    assert "limit of 4" in a.reason
    assert any("partitions bound parallelism" in r for r in a.reasons)
    too_many = advise(0, None, None, 6, 4, None, NOW)
    assert (too_many.action, too_many.workers) == ("scale_down", 4)


def test_never_below_one_worker() -> None:
    a = advise(0, 0.0, None, 0, 4, None, NOW)
    assert a.current_workers == 1
    assert a.workers == 1


def test_cpu_over_target_scales_up() -> None:
    a = advise(0, 95.0, None, 2, 8, None, NOW)  # ceil(2 * 95 / 70) = 3
    assert a.needs["cpu"] == 3
    assert (a.action, a.workers) == ("scale_up", 3)
    assert a.reason.endswith("(cpu)")


def test_cpu_at_target_holds() -> None:
    assert advise(0, 70.0, None, 2, 8, None, NOW).action == "hold"


def test_latency_over_target_scales_up_and_blocks_scale_down() -> None:
    a = advise(0, 10.0, 4.5, 2, 8, None, NOW)
    assert a.needs["latency"] == 3
    assert (a.action, a.workers) == ("scale_up", 3)
    assert any("p95 4.50s over 3.00s" in r for r in a.reasons)
    at_cap = advise(0, 10.0, 4.5, 4, 4, None, NOW)  # low lag and cpu, but slow: do not shrink
    assert (at_cap.action, at_cap.workers) == ("hold", 4)


def test_scale_down_when_every_signal_fits_fewer_workers() -> None:
    a = advise(50, 20.0, 0.5, 4, 8, None, NOW)  # lag 1, cpu ceil(4*20/70)=2, step floor(4/1.5)=2
    assert (a.action, a.workers) == ("scale_down", 2)
    b = advise(0, 1.0, None, 8, 8, None, NOW)  # all need 1; a change goes at most to floor(8/1.5)=5
    assert (b.action, b.workers) == ("scale_down", 5)
    assert any("step limited to /1.5" in r for r in b.reasons)


def test_cpu_keeps_workers_that_lag_would_drop() -> None:
    a = advise(0, 60.0, None, 3, 8, None, NOW)  # lag wants 1, cpu wants ceil(3*60/70)=3
    assert (a.action, a.workers) == ("hold", 3)


def test_cooldown_holds_and_says_how_long() -> None:
    a = advise(1000, None, None, 1, 4, NOW - 20, NOW)
    assert (a.action, a.workers, a.desired_workers) == ("hold", 1, 2)
    assert a.cooldown_remaining_s == pytest.approx(40.0)
    assert "cooldown, 40s left before scaling to 2" in a.reason
    after = advise(1000, None, None, 1, 4, NOW - 61, NOW)
    assert (after.action, after.workers) == ("scale_up", 2)


def test_policy_overrides() -> None:
    policy = ScalePolicy(target_lag_per_worker=10, scale_factor=3.0, cooldown_s=0, max_workers=5)
    a = advise(100, None, None, 1, 16, NOW - 1, NOW, policy)  # needs 10, step 3, then max_workers 5
    assert (a.action, a.workers) == ("scale_up", 3)
    b = advise(100, None, None, 4, 16, None, NOW, policy)
    assert (b.workers, b.max_workers) == (5, 5)
    assert any("capped at max_workers 5" in r for r in b.reasons)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ScalePolicy(scale_factor=1.0)
    with pytest.raises(ValueError):
        ScalePolicy(target_lag_per_worker=0)
