"""The ONNX graph of a BERT sentence encoder, written with ``onnx.helper`` from safetensors weights.

The graph uses the node patterns of a PyTorch export (MatMul+Add projections, Reshape/Transpose heads,
Div-scaled scores, an additive -10000 mask built as Unsqueeze/Unsqueeze/Cast/Sub/Mul, erf GELU, Add +
LayerNormalization) so that ``onnxruntime.transformers.optimizer`` fuses it into Attention,
SkipLayerNormalization and BiasGelu. Mean pooling over the attention mask and L2 normalisation are part
of the graph: the one output is the sentence embedding [batch, hidden].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.weights import MINILM, ModelSpec

OPSET = 17
IR_VERSION = 8  # loadable by every onnxruntime this project supports
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
MASK_VALUE = -10000.0  # the additive mask value onnxruntime's attention fusion recognises


class _EncoderGraph:
    """Accumulates nodes and initialisers; one method per block of the encoder."""

    def __init__(self, weights: dict[str, np.ndarray], spec: ModelSpec) -> None:
        self.weights = weights
        self.spec = spec
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        f32, i64 = np.float32, np.int64
        self.heads_shape = self.const("shape_heads", np.array([0, 0, spec.num_heads, spec.head_dim], dtype=i64))
        self.merged_shape = self.const("shape_merged", np.array([0, 0, spec.hidden_size], dtype=i64))
        self.one = self.const("one", np.array(1.0, dtype=f32))
        self.half = self.const("half", np.array(0.5, dtype=f32))
        self.sqrt2 = self.const("sqrt2", np.array(math.sqrt(2.0), dtype=f32))
        self.scale = self.const("sqrt_head_dim", np.array(math.sqrt(spec.head_dim), dtype=f32))
        self.axis0 = self.const("axes_0", np.array([0], dtype=i64))
        self.axis1 = self.const("axes_1", np.array([1], dtype=i64))
        self.axis2 = self.const("axes_2", np.array([2], dtype=i64))
        self.axis_last = self.const("axes_last", np.array([-1], dtype=i64))

    # -- primitives

    def w(self, key: str) -> np.ndarray:
        return np.asarray(self.weights[key], dtype=np.float32)

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, out: str | None = None, **attrs: Any) -> str:
        output = out or f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def linear(self, x: str, prefix: str, name: str) -> str:
        wt = self.const(f"{name}.weight_t", self.w(f"{prefix}.weight").T)
        b = self.const(f"{name}.bias", self.w(f"{prefix}.bias"))
        return self.op("Add", [self.op("MatMul", [x, wt], f"{name}/MatMul"), b], f"{name}/Add")

    def layer_norm(self, x: str, prefix: str, name: str) -> str:
        gamma = self.const(f"{name}.gamma", self.w(f"{prefix}.weight"))
        beta = self.const(f"{name}.beta", self.w(f"{prefix}.bias"))
        return self.op("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=self.spec.layer_norm_eps)

    # -- blocks

    def embeddings(self) -> str:
        """word + (position + token type 0), then LayerNorm: [batch, seq, hidden]."""
        word = self.const("word_embeddings", self.w("embeddings.word_embeddings.weight"))
        pos_tt = self.const(
            "position_embeddings",
            self.w("embeddings.position_embeddings.weight") + self.w("embeddings.token_type_embeddings.weight")[0],
        )
        words = self.op("Gather", [word, "input_ids"], "embeddings/word", axis=0)
        seq_len = self.op("Shape", ["input_ids"], "embeddings/seq_len", start=1, end=2)
        positions = self.op("Slice", [pos_tt, self.axis0, seq_len, self.axis0], "embeddings/positions")
        summed = self.op("Add", [words, positions], "embeddings/add")
        return self.layer_norm(summed, "embeddings.LayerNorm", "embeddings/LayerNorm")

    def additive_mask(self) -> str:
        """(1 - mask) * -10000 as [batch, 1, 1, seq]."""
        m = self.op("Unsqueeze", ["attention_mask", self.axis1], "mask/unsq1")
        m = self.op("Unsqueeze", [m, self.axis2], "mask/unsq2")
        m = self.op("Cast", [m], "mask/cast", to=TensorProto.FLOAT)
        value = self.const("mask_value", np.array(MASK_VALUE, dtype=np.float32))
        return self.op("Mul", [self.op("Sub", [self.one, m], "mask/sub"), value], "mask/mul")

    def attention(self, x: str, mask: str, p: str, n: str) -> str:
        """Self-attention + output projection + residual LayerNorm."""

        def heads(t: str, perm: list[int], tag: str) -> str:
            shaped = self.op("Reshape", [t, self.heads_shape], f"{n}/{tag}/reshape")
            return self.op("Transpose", [shaped], f"{n}/{tag}/t", perm=perm)

        q = heads(self.linear(x, f"{p}.attention.self.query", f"{n}/q"), [0, 2, 1, 3], "q")
        k = heads(self.linear(x, f"{p}.attention.self.key", f"{n}/k"), [0, 2, 3, 1], "k")
        v = heads(self.linear(x, f"{p}.attention.self.value", f"{n}/v"), [0, 2, 1, 3], "v")
        scores = self.op("Div", [self.op("MatMul", [q, k], f"{n}/qk"), self.scale], f"{n}/scale")
        probs = self.op("Softmax", [self.op("Add", [scores, mask], f"{n}/masked")], f"{n}/softmax", axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [probs, v], f"{n}/ctx")], f"{n}/ctx/t", perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.merged_shape], f"{n}/ctx/reshape")
        out = self.linear(ctx, f"{p}.attention.output.dense", f"{n}/attn_out")
        residual = self.op("Add", [out, x], f"{n}/attn_residual")
        return self.layer_norm(residual, f"{p}.attention.output.LayerNorm", f"{n}/attn_ln")

    def feed_forward(self, x: str, p: str, n: str) -> str:
        """Linear + exact (erf) GELU + linear + residual LayerNorm."""
        inner = self.linear(x, f"{p}.intermediate.dense", f"{n}/ffn_in")
        erf = self.op("Erf", [self.op("Div", [inner, self.sqrt2], f"{n}/gelu/div")], f"{n}/gelu/erf")
        gate = self.op("Mul", [inner, self.op("Add", [erf, self.one], f"{n}/gelu/add")], f"{n}/gelu/mul")
        gelu = self.op("Mul", [gate, self.half], f"{n}/gelu/half")
        out = self.linear(gelu, f"{p}.output.dense", f"{n}/ffn_out")
        residual = self.op("Add", [out, x], f"{n}/ffn_residual")
        return self.layer_norm(residual, f"{p}.output.LayerNorm", f"{n}/ffn_ln")

    def token_mask(self) -> str:
        """The attention mask as float [batch, seq, 1], for zeroing and pooling padded positions."""
        mask = self.op("Cast", ["attention_mask"], "pool/cast", to=TensorProto.FLOAT)
        return self.op("Unsqueeze", [mask, self.axis_last], "pool/mask")

    def mean_pool_normalise(self, x: str, mask: str) -> str:
        """Mean over real tokens, then divide by the L2 norm: [batch, hidden]."""
        summed = self.op("ReduceSum", [self.op("Mul", [x, mask], "pool/masked"), self.axis1], "pool/sum", keepdims=0)
        count = self.op("ReduceSum", [mask, self.axis1], "pool/count", keepdims=0)
        count = self.op("Max", [count, self.const("eps_count", np.array(1e-9, dtype=np.float32))], "pool/clamp")
        mean = self.op("Div", [summed, count], "pool/mean")
        norm = self.op("ReduceL2", [mean], "norm/l2", axes=[1], keepdims=1)
        norm = self.op("Max", [norm, self.const("eps_norm", np.array(1e-12, dtype=np.float32))], "norm/clamp")
        return self.op("Div", [mean, norm], "norm/div", out=OUTPUT_NAME)

    def model(self) -> onnx.ModelProto:
        tokens = self.token_mask()
        # Padded positions start from zeros instead of the [PAD] embedding. Real tokens never attend to them, so
        # this changes no embedding; it keeps padded rows' activations ordinary, which matters for int8, where
        # one dynamic scale covers the whole batch tensor, padding included.
        x = self.op("Mul", [self.embeddings(), tokens], "embeddings/zero_padding")
        mask = self.additive_mask()
        for i in range(self.spec.num_layers):
            p, n = f"encoder.layer.{i}", f"layer{i}"
            x = self.feed_forward(self.attention(x, mask, p, n), p, n)
        self.mean_pool_normalise(x, tokens)
        graph = helper.make_graph(
            self.nodes,
            f"{self.spec.name}-sentence-encoder",
            [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in INPUT_NAMES],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", self.spec.hidden_size])],
            initializer=self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="aifleet")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def build_graph(weights: dict[str, np.ndarray], spec: ModelSpec = MINILM) -> onnx.ModelProto:
    """The unfused fp32 encoder graph: inputs ``input_ids``/``attention_mask`` int64 [batch, sequence], output
    ``sentence_embedding`` float32 [batch, hidden]."""
    return _EncoderGraph(weights, spec).model()
