"""Scaling advice for the worker group from lag, CPU and latency.

Three signals each say how many workers they need:

* **queue depth**: ``ceil(lag_total / target_lag_per_worker)`` (100 records per worker by default);
* **CPU**: ``ceil(current * cpu_pct / cpu_target_pct)`` (the HPA rule; 70% by default);
* **latency**: p95 above the target (3 s) asks for ``ceil(current * scale_factor)``; below it, it
  asks for nothing (latency alone does not say how many fewer workers would do).

The largest need wins. A step never goes further than ``scale_factor`` (1.5x) away from the
current count (and always at least one worker), because every change costs a consumer-group
rebalance; scaling down also needs every signal to be satisfied at the smaller count and the
latency to be under target. Within ``cooldown_s`` (60 s) of the last change the advice is to
hold. The result is kept within ``[min_workers, min(partitions, max_workers)]``: workers beyond
the partition count would get no partitions and sit idle.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["scale_up", "scale_down", "hold"]


class ScalePolicy(BaseModel):
    """Targets and limits of the advisor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_lag_per_worker: int = Field(default=100, ge=1, description="Queued records one worker may have.")
    scale_factor: float = Field(default=1.5, gt=1.0, description="Largest multiplicative step per change.")
    cooldown_s: float = Field(default=60.0, ge=0, description="Seconds after a change before the next one.")
    cpu_target_pct: float = Field(default=70.0, gt=0, le=100)
    latency_target_s: float = Field(default=3.0, gt=0, description="End-to-end p95 target.")
    min_workers: int = Field(default=1, ge=1)
    max_workers: int | None = Field(default=None, ge=1, description="Extra cap besides the partition count.")


class Advice(BaseModel):
    """What to do now, what the signals want, and why."""

    model_config = ConfigDict(frozen=True)

    action: Action
    current_workers: int
    workers: int = Field(description="Workers to run now (equals current when holding).")
    desired_workers: int = Field(description="What the signals want, cooldown aside.")
    max_workers: int
    reason: str
    reasons: list[str]
    needs: dict[str, int] = Field(description="Workers each signal asks for.")
    cooldown_remaining_s: float = 0.0


def _signal_needs(
    policy: ScalePolicy, lag_total: int, cpu_pct: float | None, p95_latency_s: float | None, current: int
) -> tuple[dict[str, int], list[str]]:
    """Workers each signal asks for, with a line of explanation each."""
    needs: dict[str, int] = {}
    reasons: list[str] = []
    needs["lag"] = max(1, math.ceil(lag_total / policy.target_lag_per_worker))
    reasons.append(
        f"lag {lag_total} at {policy.target_lag_per_worker}/worker needs {needs['lag']}"
        f" ({lag_total / current:.0f}/worker now)"
    )
    if cpu_pct is not None:
        needs["cpu"] = max(1, math.ceil(current * max(0.0, cpu_pct) / policy.cpu_target_pct - 1e-9))
        reasons.append(f"cpu {cpu_pct:.0f}% against {policy.cpu_target_pct:.0f}% needs {needs['cpu']}")
    if p95_latency_s is not None:
        if p95_latency_s > policy.latency_target_s:
            # Over target, latency asks for one step up; it cannot say how many fewer would do.
            needs["latency"] = math.ceil(current * policy.scale_factor)
            reasons.append(
                f"p95 {p95_latency_s:.2f}s over {policy.latency_target_s:.2f}s target needs {needs['latency']}"
            )
        else:
            reasons.append(f"p95 {p95_latency_s:.2f}s within {policy.latency_target_s:.2f}s target")
    return needs, reasons


def _stepped(policy: ScalePolicy, need: int, current: int, reasons: list[str]) -> int:
    """``need``, but at most one ``scale_factor`` step away from ``current``."""
    if need > current:
        step = max(current + 1, math.ceil(current * policy.scale_factor))
        if need > step:
            reasons.append(f"step limited to x{policy.scale_factor:g} (to {step}) per change")
        return min(need, step)
    if need < current:
        step = max(policy.min_workers, min(current - 1, math.floor(current / policy.scale_factor)))
        if need < step:
            reasons.append(f"step limited to /{policy.scale_factor:g} (to {step}) per change")
        return max(need, step)
    return current


def advise(
    lag_total: int,
    cpu_pct: float | None,
    p95_latency_s: float | None,
    current_workers: int,
    partitions: int,
    last_scale_at: float | None,
    now: float,
    policy: ScalePolicy | None = None,
) -> Advice:
    """Advice for a group of ``current_workers`` over ``partitions`` partitions (times in seconds)."""
    policy = policy or ScalePolicy()
    current = max(1, current_workers)
    upper = max(policy.min_workers, min(max(1, partitions), policy.max_workers or partitions or 1))
    needs, reasons = _signal_needs(policy, max(0, lag_total), cpu_pct, p95_latency_s, current)
    need = max(needs.values())
    stepped = _stepped(policy, need, current, reasons)
    desired = min(max(stepped, policy.min_workers), upper)
    if desired < stepped:
        reasons.append(
            f"capped at {upper}: partitions bound parallelism (add partitions to scale further)"
            if upper == partitions
            else f"capped at max_workers {upper}"
        )
    elif desired > stepped:
        reasons.append(f"kept at min_workers {policy.min_workers}")

    remaining = 0.0 if last_scale_at is None else max(0.0, policy.cooldown_s - (now - last_scale_at))
    action: Action = "hold"
    workers = current
    if desired == current:
        limited = need > current
        reason = f"hold at {current}: " + (f"at the limit of {upper} workers" if limited else "signals within targets")
    elif remaining > 0:
        reason = f"hold at {current}: cooldown, {remaining:.0f}s left before scaling to {desired}"
    else:
        action = "scale_up" if desired > current else "scale_down"
        workers = desired
        driver = max(needs, key=lambda k: needs[k]) if desired > current else "all signals"
        reason = f"{action.replace('_', ' ')} {current} -> {desired} ({driver})"
    return Advice(
        action=action,
        current_workers=current,
        workers=workers,
        desired_workers=desired,
        max_workers=upper,
        reason=reason,
        reasons=reasons,
        needs=needs,
        cooldown_remaining_s=round(remaining, 3),
    )
