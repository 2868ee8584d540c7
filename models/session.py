"""onnxruntime sessions: CUDA when it is really usable (with I/O binding), else CPU, and an honest report of
which provider is active.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available whether or not a GPU and the CUDA/cuDNN
libraries are there, and when creating the provider fails it logs and falls back to CPU silently. So
:func:`create_session` reads ``session.get_providers()`` after creating the session and records the
provider that is really first in line; ``strict=True`` turns a fallback into :class:`ExecutionProviderUnavailable`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.errors import ExecutionProviderUnavailable
from models.graph import OUTPUT_NAME
from models.tokenize import Batch

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NVIDIA_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0")
# onnxruntime's session-level fusions that slow the CPU provider down. SkipLayerNormalization: its CPU kernel is
# slower than the residual Add + LayerNormalization pair it replaces (batch 1, 2 threads: int8 1309 -> 1150 us,
# fp32 2031 -> 1984 us). The builder leaves that fusion out of CPU graphs; this keeps the session from redoing it.
CPU_DISABLED_FUSIONS = ("SkipLayerNormFusion",)


def available_providers() -> list[str]:
    """What this onnxruntime build offers (not what will work: see module doc)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def nvidia_device_present(paths: Sequence[str] = NVIDIA_DEVICE_FILES) -> bool:
    """A cheap hint that a GPU is attached: the NVIDIA device files exist."""
    return any(os.path.exists(p) for p in paths)


@dataclass(frozen=True)
class ProviderPlan:
    """Which providers to ask onnxruntime for, and why."""

    device: Device
    providers: tuple[str, ...]
    note: str = ""

    @property
    def wants_cuda(self) -> bool:
        """True when CUDA is asked for first."""
        return bool(self.providers) and self.providers[0] == CUDA


def plan_providers(device: Device, available: Sequence[str], *, gpu_hint: bool) -> ProviderPlan:
    """Providers to request for a device.

    ``cpu``: CPU only. ``cuda``: CUDA then CPU (so a silent fallback can be seen and reported), or
    :class:`ExecutionProviderUnavailable` when this build has no CUDA provider at all. ``auto``: CUDA then CPU when the
    build has CUDA and ``gpu_hint`` says a GPU is attached, else CPU only.
    """
    if device == "cpu":
        return ProviderPlan(device, (CPU,), "cpu requested")
    if device == "cuda":
        if CUDA not in available:
            offered = list(available)
            raise ExecutionProviderUnavailable(f"CUDA is unavailable: this onnxruntime build offers only {offered}")
        hint = "" if gpu_hint else " (no NVIDIA device files found)"
        return ProviderPlan(device, (CUDA, CPU), f"cuda requested{hint}")
    if device != "auto":
        raise ValueError(f"unknown device {device!r}; expected auto, cpu or cuda")
    if CUDA in available and gpu_hint:
        return ProviderPlan(device, (CUDA, CPU), "auto: NVIDIA device present")
    why = "no CUDA provider in this build" if CUDA not in available else "no NVIDIA device found"
    return ProviderPlan(device, (CPU,), f"auto: {why}")


@dataclass(frozen=True)
class ProviderReport:
    """What was asked for and what onnxruntime actually uses."""

    device: Device
    requested: tuple[str, ...]
    active: tuple[str, ...]
    note: str = ""

    @property
    def provider(self) -> str:
        """The provider that runs the graph (first of the session's providers)."""
        return self.active[0] if self.active else CPU

    @property
    def fell_back(self) -> bool:
        """True when the first requested provider is not the active one."""
        return bool(self.requested) and self.requested[0] != self.provider

    @property
    def on_cuda(self) -> bool:
        """True when the graph runs on the CUDA provider."""
        return self.provider == CUDA

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form for logs and the CLI."""
        return {
            "device": self.device,
            "requested": list(self.requested),
            "active": list(self.active),
            "provider": self.provider,
            "fell_back": self.fell_back,
            "note": self.note,
        }


def report_for(plan: ProviderPlan, session_providers: Sequence[str]) -> ProviderReport:
    """The report for a session created from ``plan`` whose ``get_providers()`` returned ``session_providers``."""
    note = plan.note
    if plan.wants_cuda and (not session_providers or session_providers[0] != CUDA):
        note = f"{note}; CUDA provider could not be created, onnxruntime fell back to {list(session_providers)}"
    return ProviderReport(plan.device, plan.providers, tuple(session_providers), note)


class EncoderSession:
    """One onnxruntime session of a sentence encoder; ``run`` turns a padded batch into embeddings."""

    def __init__(self, session: Any, report: ProviderReport, path: Path) -> None:
        self.session = session
        self.report = report
        self.path = path

    @property
    def provider(self) -> str:
        """The active provider."""
        return self.report.provider

    def run(self, batch: Batch) -> np.ndarray:
        """Embeddings float32 [batch, hidden]; on CUDA through I/O binding (output allocated on the device)."""
        if not self.report.on_cuda:
            return np.asarray(self.session.run([OUTPUT_NAME], batch.feeds())[0], dtype=np.float32)
        binding = self.session.io_binding()
        for name, value in batch.feeds().items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output(OUTPUT_NAME, "cuda")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)

    def warm_up(self, lengths: Sequence[int] = (8, 32)) -> None:
        """Run a couple of tiny batches so first requests do not pay for allocation and kernel selection."""
        for n in lengths:
            ids = np.full((2, n), 1000, dtype=np.int64)
            ids[:, 0], ids[:, -1] = 101, 102
            self.run(Batch(ids, np.ones_like(ids)))


def create_session(
    path: Path,
    device: Device = "auto",
    *,
    intra_op_threads: int | None = None,
    strict: bool = False,
    available: Sequence[str] | None = None,
    gpu_hint: bool | None = None,
) -> EncoderSession:
    """A session for ``path`` on ``device``; ``strict`` raises when the requested provider is not active."""
    import onnxruntime as ort

    plan = plan_providers(
        device,
        available if available is not None else available_providers(),
        gpu_hint=nvidia_device_present() if gpu_hint is None else gpu_hint,
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    session = ort.InferenceSession(
        str(path),
        sess_options=options,
        providers=list(plan.providers),
        disabled_optimizers=[] if plan.wants_cuda else list(CPU_DISABLED_FUSIONS),
    )
    report = report_for(plan, session.get_providers())
    if strict and report.fell_back:
        wanted = plan.providers[0].removesuffix("ExecutionProvider")
        raise ExecutionProviderUnavailable(f"{wanted} is unavailable: {report.note}")
    return EncoderSession(session, report, Path(path))
