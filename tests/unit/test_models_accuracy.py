"""The built ONNX encoders against an independent float64 numpy forward pass, and against each other."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from models.build import artefact_path, build_variants, read_manifest
from models.embedder import Embedder, new_session_pool
from models.graph import INPUT_NAMES, OUTPUT_NAME
from models.reference import ReferenceEncoder
from models.session import create_session
from models.tokenize import TextTokenizer, pad_ids


def _load_fixture() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "fixtures" / "paraphrases.py"
    spec = importlib.util.spec_from_file_location("aifleet_test_paraphrases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATA = _load_fixture()


@pytest.fixture(scope="session")
def models_home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All variants built once into pytest's cache dir (a no-op when they are already fresh), or into a temp
    dir when the cache plugin is off."""
    cache = getattr(request.config, "cache", None)
    home = Path(cache.mkdir("aifleet-models")) if cache is not None else tmp_path_factory.mktemp("aifleet-models")
    build_variants(("fp32", "int8", "fp16"), home=home)
    return home


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer()


@pytest.fixture(scope="module")
def reference() -> ReferenceEncoder:
    return ReferenceEncoder()


def _embedder(variant: str, home: Path) -> Embedder:
    return Embedder(variant, "cpu", home=home, pool=new_session_pool())  # type: ignore[arg-type]


def test_fp32_matches_float64_reference_on_padded_batch(
    models_home: Path, tokenizer: TextTokenizer, reference: ReferenceEncoder
) -> None:
    texts = list(DATA.MIXED_LENGTH_SENTENCES)
    ids = tokenizer.encode(texts)
    lengths = [len(x) for x in ids]
    assert len(texts) == 32
    assert max(lengths) > 128 and min(lengths) < 5  # really mixed, and past the shipped 128 truncation
    batch = pad_ids(ids)  # one batch of 32, padded to the longest
    assert int(batch.attention_mask.sum()) < batch.input_ids.size  # padding is present
    session = create_session(artefact_path("fp32", home=models_home), "cpu")
    got = session.run(batch)
    want = reference.embed_batch(ids)  # each sentence alone, unpadded, float64
    assert got.shape == (32, 384) and got.dtype == np.float32
    assert float(np.abs(got - want).max()) <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_an_embedding(models_home: Path, tokenizer: TextTokenizer) -> None:
    session = create_session(artefact_path("fp32", home=models_home), "cpu")
    ids = tokenizer.encode(["A man is playing a guitar.", DATA.MIXED_LENGTH_SENTENCES[16]])
    alone = session.run(pad_ids(ids[:1]))
    padded = session.run(pad_ids(ids))[:1]  # same sentence, padded to ~200 tokens
    assert float(np.abs(alone - padded).max()) <= 1e-5


def test_paraphrases_score_higher_than_unrelated_pairs(models_home: Path) -> None:
    emb = _embedder("fp32", models_home)
    a = emb.embed([p[0] for p in DATA.PARAPHRASE_PAIRS])
    b = emb.embed([p[1] for p in DATA.PARAPHRASE_PAIRS])
    sim = a @ b.T
    para = np.diag(sim)
    u = DATA.UNRELATED_PAIRS
    unrelated = np.sum(emb.embed([p[0] for p in u]) * emb.embed([p[1] for p in u]), axis=1)
    assert para.min() > unrelated.max()
    assert para.mean() - unrelated.mean() > 0.4
    # Each sentence finds its own paraphrase among all the others.
    assert (sim.argmax(axis=1) == np.arange(len(a))).all()


def test_int8_agrees_with_fp32(models_home: Path) -> None:
    texts = list(DATA.MIXED_LENGTH_SENTENCES) + [t for pair in DATA.PARAPHRASE_PAIRS for t in pair]
    fp32 = _embedder("fp32", models_home).embed(texts)
    int8 = _embedder("int8", models_home).embed(texts)
    cos = np.sum(fp32 * int8, axis=1)
    assert cos.mean() >= 0.99
    assert cos.min() >= 0.98


def test_int8_keeps_paraphrase_ranking(models_home: Path) -> None:
    emb = _embedder("int8", models_home)
    a = emb.embed([p[0] for p in DATA.PARAPHRASE_PAIRS])
    b = emb.embed([p[1] for p in DATA.PARAPHRASE_PAIRS])
    assert ((a @ b.T).argmax(axis=1) == np.arange(len(a))).all()


def test_fp16_keeps_float32_io_and_agrees_with_fp32(models_home: Path) -> None:
    model = onnx.load(str(artefact_path("fp16", home=models_home)))
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in model.graph.input)
    assert model.graph.output[0].name == OUTPUT_NAME
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    texts = list(DATA.MIXED_LENGTH_SENTENCES)
    fp16 = _embedder("fp16", models_home).embed(texts)  # onnxruntime's CPU kernels run it too
    fp32 = _embedder("fp32", models_home).embed(texts)
    assert np.sum(fp16 * fp32, axis=1).min() >= 0.999


def test_graph_is_fused_and_dynamic(models_home: Path) -> None:
    manifest = read_manifest(home=models_home)
    fp32_ops = manifest["variants"]["fp32"]["ops"]
    assert fp32_ops["com.microsoft.Attention"] == 6
    assert fp32_ops["com.microsoft.BiasGelu"] == 6
    assert fp32_ops["LayerNormalization"] == 13  # CPU: residual Add + LayerNormalization (faster there)
    assert "Softmax" not in fp32_ops and "Erf" not in fp32_ops
    fp16_ops = manifest["variants"]["fp16"]["ops"]
    assert fp16_ops["com.microsoft.SkipLayerNormalization"] == 13  # CUDA: fused residual + LayerNorm
    assert fp16_ops["com.microsoft.Attention"] == 6
    int8_ops = manifest["variants"]["int8"]["ops"]
    assert int8_ops["com.microsoft.QAttention"] == 6 and int8_ops["MatMulInteger"] == 18 and "MatMul" not in int8_ops
    model = onnx.load(str(artefact_path("fp32", home=models_home)), load_external_data=False)
    for tensor in model.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 384


def test_overlong_text_is_truncated_at_512(models_home: Path, tokenizer: TextTokenizer) -> None:
    assert tokenizer.lengths([DATA.OVERLONG_TEXT]) == [512]
    out = _embedder("fp32", models_home).embed([DATA.OVERLONG_TEXT])
    assert np.isfinite(out).all() and abs(float(np.linalg.norm(out)) - 1.0) < 1e-5
