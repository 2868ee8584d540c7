"""Fault profiles: how an emulated provider misbehaves (latency, errors, 429s, hangs, bad bodies)."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Fault = Literal["ok", "status", "rate_limit", "hang", "malformed", "disconnect", "stream_error"]
_FAULTS = frozenset(Fault.__args__)  # type: ignore[attr-defined]


class FaultProfile(BaseModel):
    """What one provider does to its callers. Rates are probabilities per call."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0)
    error_rates: dict[int, float] = Field(default_factory=dict, description="HTTP status -> probability.")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=300.0, ge=0)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    disconnect_rate: float = Field(default=0.0, ge=0, le=1, description="Streams cut after some chunks.")
    disconnect_after: int | None = Field(
        default=None, ge=0, description="Text chunks sent before a disconnect cuts the stream (default: half)."
    )
    stream_error_rate: float = Field(
        default=0.0, ge=0, le=1, description="Streams that answer 200 and then send an in-stream error event."
    )
    stream_error_after: int = Field(default=0, ge=0, description="Text chunks sent before the in-stream error.")
    stream_error_status: int = Field(default=529, description="The status the in-stream error stands for.")
    chunk_delay_ms: float = Field(default=0.0, ge=0, description="Pause between streamed chunks.")
    context_window: int | None = Field(
        default=None, gt=0, description="Prompts over this many tokens get the wire format's context-length error."
    )
    blocked_words: list[str] = Field(
        default_factory=list, description="Prompts containing one of these get the wire format's content-filter reply."
    )
    script: list[str] = Field(
        default_factory=list,
        description="Faults for the next calls, in order, before random draws resume: a fault name "
        "('ok', 'rate_limit', 'hang', 'malformed', 'disconnect', 'stream_error') or an HTTP status ('503').",
    )
    down: bool = False

    def draw(self, rng: random.Random, call_index: int = 0) -> tuple[Fault, int]:
        """Pick what happens to the next call: (fault, http status). ``call_index`` counts this
        provider's calls since the profile was set (0-based), to play the ``script``."""
        if self.down:
            return "status", 503
        if call_index < len(self.script):
            step = self.script[call_index]
            if step.isdigit():
                return "status", int(step)
            if step not in _FAULTS:
                raise ValueError(f"unknown scripted fault {step!r}")
            return step, 429 if step == "rate_limit" else 200  # type: ignore[return-value]
        x = rng.random()
        for status, rate in sorted(self.error_rates.items()):
            if x < rate:
                return "status", status
            x -= rate
        for fault, rate in (
            ("rate_limit", self.rate_limit_rate),
            ("hang", self.hang_rate),
            ("malformed", self.malformed_rate),
            ("disconnect", self.disconnect_rate),
            ("stream_error", self.stream_error_rate),
        ):
            if x < rate:
                return fault, 429 if fault == "rate_limit" else 200  # type: ignore[return-value]
            x -= rate
        return "ok", 200

    def latency_s(self, rng: random.Random) -> float:
        """This call's added latency in seconds."""
        jitter = rng.uniform(-self.latency_jitter_ms, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000.0
