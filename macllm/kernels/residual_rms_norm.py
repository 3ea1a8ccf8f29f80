"""The residual add fused with the next RMSNorm: h = x + r, y = rms_norm(h) * w, both returned.

In the decoder layer this is `h = x + attn(...)` followed by `post_attention_layernorm(h)`: two
reads of h become one, and one dispatch replaces two.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.kernels._common import (
    REDUCE_HEADER,
    SUPPORTED_DTYPES,
    round_up,
    scalar,
)
from macllm.kernels.gate import use_kernel

NAME = "residual_rms_norm"

MAX_DIM = 32768  # a row lives in registers: at most 32 values per thread at 1024 threads
# Decode-sized inputs only: prefill is not the bottleneck, and custom kernels have no gradient, so
# training (whole sequences) must stay on the differentiable reference.
MAX_ROWS = 8


def reference(x: mx.array, r: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    """Exactly what the decoder layer computes without the kernel (nn.RMSNorm is mx.fast.rms_norm)."""
    h = x + r
    return h, mx.fast.rms_norm(h, weight, eps)


# One threadgroup per row. The sum of squares is taken in float32; the normalised value is rounded to
# T before the weight multiplies it, as MLX's own rms_norm does.
_SOURCE = """
    constexpr int N = (D + TG - 1) / TG;
    threadgroup float buf[TG / 32];
    uint t = thread_position_in_threadgroup.x;
    uint lane = thread_index_in_simdgroup;
    uint sg = simdgroup_index_in_threadgroup;
    size_t base = size_t(threadgroup_position_in_grid.x) * D;

    float v[N];
    float sum_sq = 0.0f;
    for (int i = 0; i < N; i++) {
        int d = t + i * TG;
        v[i] = 0.0f;
        if (d < D) {
            // The add rounds to T, like `x + r` in MLX.
            T hv = static_cast<T>(static_cast<float>(x[base + d]) + static_cast<float>(r[base + d]));
            h[base + d] = hv;
            v[i] = static_cast<float>(hv);
        }
        sum_sq += v[i] * v[i];
    }
    float rstd = metal::precise::rsqrt(tg_sum<TG>(sum_sq, buf, lane, sg) / D + eps);
    for (int i = 0; i < N; i++) {
        int d = t + i * TG;
        if (d < D) {
            T normed = static_cast<T>(v[i] * rstd);
            y[base + d] = static_cast<T>(static_cast<float>(w[d]) * static_cast<float>(normed));
        }
    }
"""

_kernel = None


def get_kernel():
    """The kernel, built on first use (a test replaces this to simulate a build failure)."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.metal_kernel(
            name="macllm_residual_rms_norm",
            input_names=["x", "r", "w", "eps"],
            output_names=["h", "y"],
            source=_SOURCE,
            header=REDUCE_HEADER,
        )
    return _kernel


def threads_per_row(dim: int) -> int:
    """About 8 values per thread, a whole number of SIMD groups, at most 1024."""
    return min(1024, max(32, round_up(dim // 8, 32)))


def metal(x: mx.array, r: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    dim = x.shape[-1]
    tg = threads_per_row(dim)
    rows = x.size // dim
    h, y = get_kernel()(
        inputs=[x, r, weight, scalar(float(eps))],
        template=[("T", x.dtype), ("D", dim), ("TG", tg)],
        grid=(rows * tg, 1, 1),
        threadgroup=(tg, 1, 1),
        output_shapes=[x.shape, x.shape],
        output_dtypes=[x.dtype, x.dtype],
    )
    return h, y


def supported(x: mx.array, r: mx.array, weight: mx.array) -> bool:
    return (x.dtype in SUPPORTED_DTYPES and r.dtype == x.dtype and weight.dtype == x.dtype
            and r.shape == x.shape and weight.shape == (x.shape[-1],) and x.shape[-1] <= MAX_DIM
            and 0 < x.size // max(1, x.shape[-1]) <= MAX_ROWS)


def apply(x: mx.array, r: mx.array, weight: mx.array, eps: float) -> tuple[mx.array, mx.array]:
    """(x + r, rms_norm(x + r)): the kernel for decode-sized inputs when the gate chose it, else the reference."""
    if supported(x, r, weight) and use_kernel(NAME):
        return metal(x, r, weight, eps)
    return reference(x, r, weight, eps)
