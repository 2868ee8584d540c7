"""An independent numpy float64 forward pass of the BERT sentence encoder: the correctness reference.

It shares nothing with the ONNX graph but the weights file: it runs each sentence on its own, unpadded,
with exact erf GELU, masked softmax and mean pooling, all in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from models.weights import MINILM, ModelSpec, load_weights

_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _ERF(x / math.sqrt(2.0)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ReferenceEncoder:
    """float64 BERT + mean pooling + L2 normalisation, one unpadded sentence at a time."""

    def __init__(self, spec: ModelSpec = MINILM, weights: dict[str, np.ndarray] | None = None) -> None:
        raw = weights if weights is not None else load_weights(spec)
        self.spec = spec
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items() if v.dtype.kind == "f"}

    def _linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def token_states(self, ids: Sequence[int]) -> np.ndarray:
        """Last hidden states [seq, hidden] for one sentence's token ids (no padding)."""
        s, w = self.spec, self.w
        ids_arr = np.asarray(ids, dtype=np.int64)
        n = ids_arr.shape[0]
        x = (
            w["embeddings.word_embeddings.weight"][ids_arr]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], s.layer_norm_eps)
        for i in range(s.num_layers):
            p = f"encoder.layer.{i}"
            q = self._linear(x, f"{p}.attention.self.query").reshape(n, s.num_heads, s.head_dim).transpose(1, 0, 2)
            k = self._linear(x, f"{p}.attention.self.key").reshape(n, s.num_heads, s.head_dim).transpose(1, 0, 2)
            v = self._linear(x, f"{p}.attention.self.value").reshape(n, s.num_heads, s.head_dim).transpose(1, 0, 2)
            probs = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(s.head_dim))
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, s.hidden_size)
            x = _layer_norm(
                self._linear(ctx, f"{p}.attention.output.dense") + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
                s.layer_norm_eps,
            )
            h = _gelu(self._linear(x, f"{p}.intermediate.dense"))
            x = _layer_norm(
                self._linear(h, f"{p}.output.dense") + x,
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
                s.layer_norm_eps,
            )
        return x

    def embed_ids(self, ids: Sequence[int]) -> np.ndarray:
        """The L2-normalised mean-pooled sentence embedding [hidden] of one sentence."""
        pooled = self.token_states(ids).mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

    def embed_batch(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings [n, hidden] (float64) for several unpadded id sequences."""
        return np.stack([self.embed_ids(ids) for ids in batch])
