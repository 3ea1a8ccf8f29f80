"""Fused float32 ops for the CPU decode step (csrc/fused_*.cpp, docs/kernels.md "Fused decode ops").

MLX's CPU backend builds rms_norm, rope and attention from 8-15 small ops each, and each op costs
~5-10 us to schedule: 70 nodes per layer, more time per token than the matmuls. These are one node
each. The models call them when `active(x)`: our extension is built, MACLLM_CPU_KERNEL is not `off`,
the default device is the CPU and x is float32 (the CPU compute type). On Metal mx.fast's kernels run.
"""

from __future__ import annotations

import os

import mlx.core as mx

from macllm.cpu_kernels import ENV, extension
from macllm.kernels import gate

# Beyond this many query rows MLX's attention (two BLAS matmuls) is faster than our per-row loop.
MAX_ATTEND_QUERIES = 16


def active(x: mx.array) -> bool:
    """Whether the fused ops compute x's layer (checked per call: cheap, and tests switch the env). Where
    Metal exists its own kernels' gate decides (macllm/kernels), even for work sent to the CPU."""
    return (extension is not None and x.dtype == mx.float32
            and os.environ.get(ENV, "auto").strip().lower() != "off" and mx.default_device() == mx.cpu
            and not gate.metal_available())


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """mx.fast.rms_norm(x, weight, eps)."""
    assert extension is not None
    return extension.rms_norm(x, weight, eps)


def residual_rms_norm(x: mx.array, r: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    """(x + r, rms_norm(x + r, weight, eps))."""
    assert extension is not None
    h, normed = extension.residual_rms_norm(x, r, weight, eps)
    return h, normed


def rotate_heads(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x (B, L, H, D) rotated by half-split rope tables (L, R) -> (B, H, L, D)."""
    assert extension is not None
    return extension.rotate_heads(x, cos, sin)


def attend(q: mx.array, k: mx.array, v: mx.array, scale: float, causal: bool) -> mx.array:
    """Grouped-query attention of q (B, H, Lq, D) over k, v (B, KV, S, D) -> (B, Lq, H * Dv)."""
    assert extension is not None
    return extension.attend(q, k, v, scale, causal)


def causal_softmax(scores: mx.array, scale: float, queries: int) -> mx.array:
    """softmax(scores * scale) with the causal mask over scores (..., R, S), each run of `queries` rows one
    query head's (query i sees keys up to S - queries + i)."""
    assert extension is not None
    return extension.causal_softmax(scores, scale, queries)


def silu_mul(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up."""
    assert extension is not None
    return extension.silu_mul(gate, up)


def choose_token(logits: mx.array, u: mx.array | None, temperature: float, top_k: int, top_p: float, min_p: float,
                 alternatives: int):
    """The next token from logits (..., vocab) in one node (csrc/sample_token.cpp): (token, its logprob, None
    or (the `alternatives` likeliest ids, their logprobs), most likely first); greedy at temperature 0, else
    drawn with the uniforms u (...) exactly as macllm.generation.sampling's MLX composition draws."""
    assert extension is not None
    out = extension.choose_token(logits, u, temperature, top_k, top_p, min_p, alternatives)
    return out[0], out[1], (out[2], out[3]) if alternatives > 0 else None
