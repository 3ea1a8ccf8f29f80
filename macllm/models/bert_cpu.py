"""The BERT encoder of models/bert.py, evaluated with numpy for CPUs: packed rows, no padding.

Why not MLX here: MLX's CPU backend evaluates exp and erf one element at a time (measured 17x slower
than numpy's SIMD exp), so MiniLM's GELU and attention softmax took ~60% of a forward pass; the
matrix products run at the same speed in either (both call OpenBLAS). On Apple silicon the MLX model
(on the GPU) stays in use: see rag/embedder.py.

Sequences are packed end to end (`lengths` says where each ends), so the matrix products never see
padding; attention runs per sequence over its own tokens only, so no mask is needed. Row-wise work
(projection, residual, LayerNorm, feed-forward, GELU) goes in tiles of rows that stay in cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from macllm.models.bert import BertConfig

_TILE_ROWS = 256  # 256 x 1536 float32 = 1.5 MB: the feed-forward intermediate stays in L2/L3

# erf(z) = 1 - t (a1 + t (a2 + ... t a5)) exp(-z^2), t = 1 / (1 + p z), z >= 0: Abramowitz & Stegun
# 7.1.26, absolute error <= 1.5e-7 (below float32's rounding of the values it multiplies).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SQRT_HALF = 0.7071067811865476


@dataclass
class _Layer:
    qkv_w: np.ndarray  # (hidden, 3 hidden): query (pre-scaled by 1/sqrt(head dim)), key, value
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray  # (hidden, intermediate)
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class BertCpu:
    """`pooled(ids, lengths)`: mean (or [CLS]) pooled token vectors of packed sequences, in numpy float32."""

    def __init__(self, cfg: BertConfig, params: dict[str, np.ndarray]):
        """`params`: BertModel's parameters by their dotted names (as mlx.utils.tree_flatten gives them)."""
        self.cfg = cfg
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.eps = np.float32(cfg.layer_norm_eps)
        if cfg.hidden_act not in ("gelu", "gelu_python"):
            raise ValueError(f"hidden_act {cfg.hidden_act!r}: only the exact (erf) GELU is supported")

        def f32(name: str) -> np.ndarray:
            return np.ascontiguousarray(params[name], dtype=np.float32)

        self.word = f32("embeddings.word_embeddings.weight")
        self.position = f32("embeddings.position_embeddings.weight")
        self.type0 = f32("embeddings.token_type_embeddings.weight")[0]
        self.ln0_w, self.ln0_b = f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias")
        scale = np.float32(self.head_dim ** -0.5)
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{i}."

            def w(name: str, p: str = p) -> np.ndarray:  # nn.Linear keeps (out, in); x @ w wants (in, out)
                return np.ascontiguousarray(f32(p + name + ".weight").T)

            self.layers.append(_Layer(
                qkv_w=np.ascontiguousarray(np.concatenate(
                    [w("attention.self.query") * scale, w("attention.self.key"), w("attention.self.value")], axis=1)),
                qkv_b=np.concatenate([f32(p + "attention.self.query.bias") * scale,
                                      f32(p + "attention.self.key.bias"), f32(p + "attention.self.value.bias")]),
                out_w=w("attention.output.dense"), out_b=f32(p + "attention.output.dense.bias"),
                ln1_w=f32(p + "attention.output.LayerNorm.weight"), ln1_b=f32(p + "attention.output.LayerNorm.bias"),
                up_w=w("intermediate.dense"), up_b=f32(p + "intermediate.dense.bias"),
                down_w=w("output.dense"), down_b=f32(p + "output.dense.bias"),
                ln2_w=f32(p + "output.LayerNorm.weight"), ln2_b=f32(p + "output.LayerNorm.bias")))

    def hidden(self, ids: np.ndarray, lengths: list[int]) -> np.ndarray:
        """ids: (total,) token ids of the sequences end to end; lengths: each one's length. -> (total, hidden)."""
        positions = np.concatenate([np.arange(n) for n in lengths])
        x = self.word[ids] + self.position[positions] + self.type0
        _layer_norm(x, self.ln0_w, self.ln0_b, self.eps)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        for layer in self.layers:
            context = self._attention(x @ layer.qkv_w + layer.qkv_b, starts, lengths)
            for row in range(0, len(x), _TILE_ROWS):
                tile = slice(row, row + _TILE_ROWS)
                x[tile] = self._row_block(layer, x[tile], context[tile])
        return x

    def pooled(self, ids: np.ndarray, lengths: list[int], pooling: str = "mean") -> np.ndarray:
        """(len(lengths), hidden): each sequence's mean over its tokens, or its first ([CLS]) token."""
        x = self.hidden(ids, lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        if pooling == "cls":
            return x[starts]
        return np.add.reduceat(x, starts, axis=0) / np.asarray(lengths, dtype=np.float32)[:, None]

    def _attention(self, qkv: np.ndarray, starts: np.ndarray, lengths: list[int]) -> np.ndarray:
        """qkv: (total, 3 hidden) -> (total, hidden), each sequence attending over its own tokens."""
        h, d = self.heads, self.head_dim
        context = np.empty((len(qkv), h * d), dtype=np.float32)
        for start, n in zip(starts, lengths, strict=True):
            # (heads, n, d) copies: numpy hands a stacked product to BLAS only when each matrix is contiguous
            q, k, v = np.ascontiguousarray(qkv[start:start + n].reshape(n, 3, h, d).transpose(1, 2, 0, 3))
            k = np.ascontiguousarray(k.transpose(0, 2, 1))
            scores = q @ k  # (heads, n, n); the 1/sqrt(d) scale is folded into the query weights
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores *= 1.0 / scores.sum(axis=-1, keepdims=True)
            context[start:start + n].reshape(n, h, d)[:] = (scores @ v).transpose(1, 0, 2)
        return context

    def _row_block(self, layer: _Layer, x: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Attention output projection, residual, LayerNorm, then the feed-forward block, for a tile of rows."""
        a = context @ layer.out_w
        a += layer.out_b
        a += x
        _layer_norm(a, layer.ln1_w, layer.ln1_b, self.eps)
        up = a @ layer.up_w
        up += layer.up_b
        _gelu(up)
        out = up @ layer.down_w
        out += layer.down_b
        out += a
        _layer_norm(out, layer.ln2_w, layer.ln2_b, self.eps)
        return out


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: np.float32) -> None:
    """In place, over the last axis."""
    x -= x.mean(axis=-1, keepdims=True)
    variance = np.einsum("ij,ij->i", x, x)[:, None] / np.float32(x.shape[-1])
    x *= 1.0 / np.sqrt(variance + eps)
    x *= weight
    x += bias


def _gelu(x: np.ndarray) -> None:
    """In place: x * Phi(x), the exact (erf) GELU, as max(x, 0) - |x| * erfc(|x| / sqrt 2) / 2."""
    a = np.abs(x)
    t = a * np.float32(_ERF_P * _SQRT_HALF)
    t += 1
    np.reciprocal(t, out=t)
    half_tail = np.full_like(t, _ERF_A[-1] / 2)  # erfc(z) / 2 = t * poly(t) * exp(-z^2) / 2
    for coefficient in reversed(_ERF_A[:-1]):
        half_tail *= t
        half_tail += np.float32(coefficient / 2)
    half_tail *= t
    np.square(a, out=t)
    t *= np.float32(-0.5)  # -z^2 with z = |x| / sqrt 2
    np.exp(t, out=t)
    half_tail *= t
    half_tail *= a
    np.maximum(x, 0, out=x)
    x -= half_tail
