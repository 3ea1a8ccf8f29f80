"""The decoders' RMSNorm: mlx's module (same parameters), computed by our fused CPU op where it applies
(macllm/cpu_kernels/fused.py: one graph node instead of ~8 on the CPU backend)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.cpu_kernels import fused
from macllm.kernels import residual_rms_norm


class RMSNorm(nn.RMSNorm):
    def __call__(self, x: mx.array) -> mx.array:
        if fused.active(x):
            return fused.rms_norm(x, self["weight"], self.eps)
        return super().__call__(x)


def add_and_norm(x: mx.array, r: mx.array, norm: nn.RMSNorm) -> tuple[mx.array, mx.array]:
    """(x + r, norm(x + r)): the residual add and the next norm as one node on the CPU, one fused kernel
    when decoding on Metal (macllm/kernels/residual_rms_norm.py)."""
    if fused.active(x) and r.dtype == mx.float32:
        return fused.residual_rms_norm(x, r, norm["weight"], norm.eps)
    return residual_rms_norm.apply(x, r, norm["weight"], norm.eps)
