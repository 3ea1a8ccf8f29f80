"""The decode-time LoRA update in one dispatch: out = y + scale * (x A) B.

LoRALinear keeps the active slots as one (A, B, scale): one adapter as loaded, several stacked along
the rank axis with their scales folded into B. So this one kernel computes
y + sum_i s_i (x A_i) B_i for every active slot at once.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.kernels._common import SUPPORTED_DTYPES, scalar
from macllm.kernels.gate import use_kernel

NAME = "lora_delta"

# Decode: batch * seq this small (prefill is better served by two matmuls; training, which needs
# gradients that custom kernels do not have, never calls apply).
MAX_ROWS = 8
MAX_RANK = 128  # the kernel holds one float per rank per thread
THREADS = 256
COLS_PER_THREAD = 4  # a threadgroup covers THREADS * 4 output columns


def reference(y: mx.array, x: mx.array, a: mx.array, b: mx.array, scale: float) -> mx.array:
    """LoRALinear's arithmetic, unchanged: y + (scale * ((x @ A) @ B)) in x's dtype."""
    z = (x @ a) @ b
    if scale != 1.0:
        z = scale * z
    return y + z.astype(x.dtype)


# Grid: one threadgroup per (tile of output columns, row). Each threadgroup first computes the R
# values x[row] @ A (cheap: A is small and stays in cache across tiles), then its tile of columns.
# Rounding points follow the reference: x @ A and (x A) @ B round to T, the scale multiplies in T.
_SOURCE = """
    constexpr int SG = TG / 32;
    threadgroup float partial[SG * R];
    threadgroup float xa[R];
    uint t = thread_position_in_threadgroup.x;
    uint lane = thread_index_in_simdgroup;
    uint sg = simdgroup_index_in_threadgroup;
    uint row = threadgroup_position_in_grid.y;

    float acc[R];
    for (int k = 0; k < R; k++) {
        acc[k] = 0.0f;
    }
    for (int i = t; i < IN; i += TG) {
        float xi = static_cast<float>(x[size_t(row) * IN + i]);
        for (int k = 0; k < R; k++) {
            acc[k] += xi * static_cast<float>(a[size_t(i) * R + k]);
        }
    }
    for (int k = 0; k < R; k++) {
        float s = simd_sum(acc[k]);
        if (lane == 0) {
            partial[sg * R + k] = s;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int k = t; k < R; k += TG) {
        float s = 0.0f;
        for (int g = 0; g < SG; g++) {
            s += partial[g * R + k];
        }
        xa[k] = static_cast<float>(static_cast<T>(s));
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    uint col0 = threadgroup_position_in_grid.x * (TG * CPT);
    for (int j = 0; j < CPT; j++) {
        uint c = col0 + t + j * TG;
        if (c < OUT) {
            float z = 0.0f;
            for (int k = 0; k < R; k++) {
                z += xa[k] * static_cast<float>(b[size_t(k) * OUT + c]);
            }
            T zt = static_cast<T>(z);
            if (SCALED) {
                zt = static_cast<T>(static_cast<float>(scale) * static_cast<float>(zt));
            }
            size_t o = size_t(row) * OUT + c;
            out[o] = static_cast<T>(static_cast<float>(y[o]) + static_cast<float>(zt));
        }
    }
"""

_kernel = None


def get_kernel():
    """The kernel, built on first use (a test replaces this to simulate a build failure)."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.metal_kernel(
            name="macllm_lora_delta",
            input_names=["y", "x", "a", "b", "scale"],
            output_names=["out"],
            source=_SOURCE,
        )
    return _kernel


def metal(y: mx.array, x: mx.array, a: mx.array, b: mx.array, scale: float) -> mx.array:
    in_dims, rank = a.shape
    out_dims = b.shape[1]
    rows = x.size // in_dims
    tile = THREADS * COLS_PER_THREAD
    (out,) = get_kernel()(
        # The scale goes in as T: `scale * z` rounds a Python float to z's dtype first.
        inputs=[y, x, a, b, scalar(float(scale), x.dtype)],
        template=[("T", x.dtype), ("IN", in_dims), ("OUT", out_dims), ("R", rank),
                  ("TG", THREADS), ("CPT", COLS_PER_THREAD), ("SCALED", scale != 1.0)],
        grid=(-(-out_dims // tile) * THREADS, rows, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[y.shape],
        output_dtypes=[y.dtype],
    )
    return out


def supported(y: mx.array, x: mx.array, a: mx.array, b: mx.array) -> bool:
    dt = x.dtype
    if dt not in SUPPORTED_DTYPES or not (y.dtype == a.dtype == b.dtype == dt):
        return False
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or x.shape[-1] != a.shape[0]:
        return False
    rows = x.size // x.shape[-1]
    return 0 < rows <= MAX_ROWS and a.shape[1] <= MAX_RANK and y.shape == x.shape[:-1] + (b.shape[1],)


def apply(y: mx.array, x: mx.array, a: mx.array, b: mx.array, scale: float) -> mx.array:
    """y + scale * (x A) B: the kernel for decode-sized inputs when the gate chose it, else the reference."""
    if supported(y, x, a, b) and use_kernel(NAME):
        return metal(y, x, a, b, scale)
    return reference(y, x, a, b, scale)
