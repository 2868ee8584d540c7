"""Local inference: ONNX sentence-embedding models built from shipped weights (see docs/models.md).

Submodules import onnxruntime and friends lazily where they can; import what you need, e.g.
``from models.embedder import Embedder`` or ``from models.bench import run_infer_bench``.
"""
