"""What the kernels share: supported dtypes, cached scalar arguments, threadgroup reductions.

Whether a kernel runs at all is the gate's decision (gate.py).
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx

SUPPORTED_DTYPES = (mx.float16, mx.bfloat16, mx.float32)


@lru_cache(maxsize=None)
def scalar(value: float, dtype: mx.Dtype = mx.float32) -> mx.array:
    """A cached 0-d array: metal_kernel passes it as a `constant T&` argument."""
    return mx.array(value, dtype=dtype)


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


# Reductions over a whole threadgroup of TG threads (TG a multiple of 32, at most 1024). `buf` holds
# one value per SIMD group; the barrier before the write lets a caller reuse `buf` in a loop, and
# every thread adds the partials in the same order, so all threads get bit-identical results (the
# sampler's bisection depends on every thread taking the same branch).
REDUCE_HEADER = """
template <int TG>
inline float tg_sum(float v, threadgroup float* buf, uint lane, uint sg) {
    v = simd_sum(v);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (lane == 0) {
        buf[sg] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (int i = 0; i < TG / 32; i++) {
        total += buf[i];
    }
    return total;
}

template <int TG>
inline float tg_max(float v, threadgroup float* buf, uint lane, uint sg) {
    v = simd_max(v);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (lane == 0) {
        buf[sg] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float best = -INFINITY;
    for (int i = 0; i < TG / 32; i++) {
        best = metal::max(best, buf[i]);
    }
    return best;
}
"""
