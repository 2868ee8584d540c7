"""How onnxruntime's fp32 and int8 GEMMs of the encoder's shapes scale from one thread to two.

    .venv/bin/python scripts/int8_gemm_threads.py [--rows 16,64]

Prints the median µs per call of one ``MatMul`` (fp32) and one ``DynamicQuantizeMatMul`` (int8 weights,
the op the int8 model's GEMMs become) per shape and thread count. docs/models.md quotes its figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = ((384, 1536), (1536, 384), (384, 384))  # FFN in, FFN out, attention output


def _model(rows: int, k: int, n: int, int8: bool) -> bytes:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])
    if int8:
        weights = [
            numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w"),
            numpy_helper.from_array(np.full(n, 0.02, np.float32), "scale"),
            numpy_helper.from_array(np.zeros(n, np.int8), "zero"),
        ]
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "scale", "zero"], ["y"], domain="com.microsoft")
    else:
        weights = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "gemm", [x], [y], weights)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 9
    return model.SerializeToString()


def _median_us(model: bytes, threads: int, rows: int, k: int, calls: int = 500) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)}
    for _ in range(200):
        session.run(None, feed)
    runs = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(calls):
            session.run(None, feed)
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16,64", help="token rows (batch x sequence) to try")
    rows_list = [int(r) for r in parser.parse_args().rows.split(",")]
    print(f"{'rows':>4} {'k x n':>11} {'fp32 1t':>8} {'fp32 2t':>8} {'int8 1t':>8} {'int8 2t':>8}  (µs per call)")
    for rows in rows_list:
        for k, n in SHAPES:
            cells = [_median_us(_model(rows, k, n, int8), t, rows, k) for int8 in (False, True) for t in (1, 2)]
            print(f"{rows:>4} {f'{k}x{n}':>11} " + " ".join(f"{c:8.1f}" for c in cells))


if __name__ == "__main__":
    main()
