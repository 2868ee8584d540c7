"""Provider selection and the report of which provider is really active."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models.errors import ExecutionProviderUnavailable
from models.session import (
    CPU,
    CUDA,
    ProviderPlan,
    create_session,
    nvidia_device_present,
    plan_providers,
    report_for,
)
from models.tokenize import Batch

GPU_BUILD = ["TensorrtExecutionProvider", CUDA, CPU]


def test_cpu_asks_for_cpu_only() -> None:
    plan = plan_providers("cpu", GPU_BUILD, gpu_hint=True)
    assert plan.providers == (CPU,) and not plan.wants_cuda


def test_cuda_asks_for_cuda_then_cpu_so_a_fallback_shows() -> None:
    plan = plan_providers("cuda", GPU_BUILD, gpu_hint=False)
    assert plan.providers == (CUDA, CPU)
    assert "no NVIDIA device" in plan.note


def test_cuda_without_a_cuda_build_is_refused() -> None:
    with pytest.raises(ExecutionProviderUnavailable, match="CUDA is unavailable"):
        plan_providers("cuda", [CPU], gpu_hint=True)


def test_auto_uses_cuda_only_with_a_device_and_a_build() -> None:
    assert plan_providers("auto", GPU_BUILD, gpu_hint=True).providers == (CUDA, CPU)
    assert plan_providers("auto", GPU_BUILD, gpu_hint=False).providers == (CPU,)
    assert plan_providers("auto", [CPU], gpu_hint=True).providers == (CPU,)


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ValueError):
        plan_providers("tpu", GPU_BUILD, gpu_hint=True)  # type: ignore[arg-type]


def test_report_sees_a_silent_fallback() -> None:
    plan = ProviderPlan("cuda", (CUDA, CPU), "cuda requested")
    fell = report_for(plan, [CPU])
    assert fell.provider == CPU and fell.fell_back and not fell.on_cuda
    assert "fell back" in fell.note
    ok = report_for(plan, [CUDA, CPU])
    assert ok.provider == CUDA and ok.on_cuda and not ok.fell_back
    assert ok.as_dict()["provider"] == CUDA


def test_nvidia_device_hint_reads_device_files(tmp_path: Path) -> None:
    present = tmp_path / "nvidia0"
    present.touch()
    assert nvidia_device_present([str(tmp_path / "nope"), str(present)])
    assert not nvidia_device_present([str(tmp_path / "nope")])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph with the encoder's inputs and output name: mean of the ids as a [batch, 384] float."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["b", 384])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["m"]),
        helper.make_node("Cast", ["m"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["r"], keepdims=1),
        helper.make_node("Expand", ["r", "shape"], ["sentence_embedding"]),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [1, 384]),
    ]
    graph = helper.make_graph(nodes, "tiny", [ids, mask], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_cpu_session_reports_cpu_and_runs(tiny_model: Path) -> None:
    session = create_session(tiny_model, "cpu")
    assert session.provider == CPU and not session.report.fell_back
    ids = np.array([[2, 4, 0]], dtype=np.int64)
    out = session.run(Batch(ids, np.array([[1, 1, 0]], dtype=np.int64)))
    assert out.shape == (1, 384) and out.dtype == np.float32
    assert float(out[0, 0]) == pytest.approx(2.0)


def test_cuda_request_reports_what_onnxruntime_really_uses(tiny_model: Path) -> None:
    session = create_session(tiny_model, "cuda", available=GPU_BUILD, gpu_hint=True)
    active = session.session.get_providers()
    assert session.report.active == tuple(active)
    assert session.report.fell_back == (active[0] != CUDA)


def test_strict_cuda_raises_when_it_falls_back(tiny_model: Path) -> None:
    probe = create_session(tiny_model, "cuda", available=GPU_BUILD, gpu_hint=True)
    if probe.report.on_cuda:
        pytest.skip("CUDA really works here; the fallback path cannot be observed")
    with pytest.raises(ExecutionProviderUnavailable, match="CUDA is unavailable"):
        create_session(tiny_model, "cuda", strict=True, available=GPU_BUILD, gpu_hint=True)
