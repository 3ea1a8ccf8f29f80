"""Temperature, top-k, min-p and top-p filtering plus the categorical draw, without sorting the vocab.

Semantics are `filter_logprobs`'s (the reference, used by macllm.generation.sampling):
scaled = logprobs / temperature (in logprobs' dtype), then top-k (keep values >= the k-th largest),
min-p (drop values below max + log(min_p)), top-p (keep a token while the probability mass strictly
before it, in descending order and summed in float32, is under top_p). The draw is MLX's own
single-row categorical: inverse CDF over exp(x - max) with one uniform number per row. The uniforms
come from the caller's key, generated in MLX, so both paths draw from the same numbers.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.kernels._common import (
    REDUCE_HEADER,
    SUPPORTED_DTYPES,
    scalar,
)
from macllm.kernels.gate import use_kernel

NAME = "sample_filter"

THREADS = 1024  # one threadgroup per row: every reduction stays inside it


def uniforms(logprobs: mx.array, key: mx.array | None) -> mx.array:
    """One uniform per row, as mx.random.categorical draws it for a single row."""
    return mx.random.uniform(shape=logprobs.shape[:-1], key=key)


def filter_logprobs(logprobs: mx.array, top_k: int, top_p: float, min_p: float) -> mx.array:
    """Mask (to -inf) tokens outside top-k, outside the top-p nucleus, or below min_p * max prob."""
    neg_inf = mx.array(-float("inf"), logprobs.dtype)
    vocab = logprobs.shape[-1]
    if 0 < top_k < vocab:
        kth = mx.sort(logprobs, axis=-1)[..., vocab - top_k][..., None]
        logprobs = mx.where(logprobs < kth, neg_inf, logprobs)
    if min_p > 0.0:
        top = logprobs.max(axis=-1, keepdims=True)
        logprobs = mx.where(logprobs < top + mx.log(mx.array(min_p)), neg_inf, logprobs)
    if top_p < 1.0:
        order = mx.argsort(-logprobs, axis=-1)
        sorted_lp = mx.take_along_axis(logprobs, order, axis=-1)
        # In float32 whatever the input dtype: a float16/bfloat16 cumulative sum over a large vocabulary
        # is too coarse (it kept about half the nucleus on a 32k vocabulary) and would differ from the kernel.
        probs = mx.softmax(sorted_lp.astype(mx.float32), axis=-1)
        # Keep a token if the mass *before* it is still under top_p (the first token always stays).
        before = mx.cumsum(probs, axis=-1) - probs
        # Equal values count the mass before the first of them, so ties stay or go together (their sort
        # order is arbitrary; the kernel thresholds by value). Ties are common in float16/bfloat16.
        first = mx.concatenate([mx.ones_like(sorted_lp[..., :1], dtype=mx.bool_),
                                sorted_lp[..., 1:] != sorted_lp[..., :-1]], axis=-1)
        before = mx.cummax(mx.where(first, before, 0.0), axis=-1)
        keep_sorted = before < top_p
        keep = mx.put_along_axis(mx.zeros_like(keep_sorted), order, keep_sorted, axis=-1)
        logprobs = mx.where(keep, logprobs, neg_inf)
    return logprobs


def reference_filter(logprobs: mx.array, temperature: float, top_k: int, top_p: float,
                     min_p: float) -> mx.array:
    """Scaled log-probabilities with the filtered-out tokens at -inf."""
    return filter_logprobs(logprobs / temperature, top_k, top_p, min_p)


def draw(scaled: mx.array, u: mx.array) -> mx.array:
    """Inverse-CDF draw per row, step for step as mx.random.categorical does it for one row."""
    x = scaled.astype(mx.float32)  # MLX promotes to float32 (our dtypes are all <= 32 bits)
    m = x.max(axis=-1, keepdims=True)
    # exp(x - m) is NaN when m is infinite; then the draw is uniform over the maximal entries.
    w = mx.where(mx.isinf(m), (x == m).astype(x.dtype), mx.exp(x - m))
    cdf = mx.cumsum(w, axis=-1, inclusive=False)
    target = u[..., None] * w.sum(axis=-1, keepdims=True)
    # searchsorted(cdf, target, "right") - 1: the last index whose exclusive CDF is <= target.
    return (cdf <= target).astype(mx.uint32).sum(axis=-1) - mx.array(1, mx.uint32)


def reference(logprobs: mx.array, u: mx.array, temperature: float, top_k: int = 0,
              top_p: float = 1.0, min_p: float = 0.0) -> mx.array:
    """logprobs (..., vocab), u (...) uniforms in [0, 1) -> token ids (...) as uint32."""
    return draw(reference_filter(logprobs, temperature, top_k, top_p, min_p), u)


# One threadgroup per row; thread t owns a contiguous chunk of the vocabulary. Thresholds are found
# by bisection over the 32-bit ordered keys of float values, one pass over the row per step, so
# nothing is sorted: top-k finds the k-th largest value exactly in 32 passes, top-p the smallest
# value whose mass above it is under top_p in 32 more. Values are recomputed from logprobs each pass
# (cheaper than a scratch buffer at decode sizes).
_HEADER = REDUCE_HEADER + """
// float -> uint with the same order (-0.0 and +0.0 as one value, as float compares them).
inline uint order_key(float f) {
    uint bits = as_type<uint>(f == 0.0f ? 0.0f : f);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// The scaled value, rounded to T as `logprobs / temperature` is in MLX.
template <typename T>
inline float scaled_value(T lp, float temp) {
    return static_cast<float>(static_cast<T>(metal::precise::divide(static_cast<float>(lp), temp)));
}

// The value if it survives the filters known so far, else -inf (kmin = 0, thr = -inf, pmin = 0
// mean "no filter").
inline float kept_value(float v, uint kmin, float thr, uint pmin) {
    uint key = order_key(v);
    return (key >= kmin && !(v < thr) && key >= pmin) ? v : -INFINITY;
}
"""

_SOURCE = """
    constexpr int CHUNK = (V + TG - 1) / TG;
    threadgroup float buf[TG / 32];
    threadgroup uint ibuf[TG / 32];
    uint t = thread_position_in_threadgroup.x;
    uint lane = thread_index_in_simdgroup;
    uint sg = simdgroup_index_in_threadgroup;
    uint row = threadgroup_position_in_grid.y;
    auto lp = logprobs + size_t(row) * V;
    float tmp = static_cast<float>(temp);
    int start = metal::min(int(t) * CHUNK, V);
    int end = metal::min(start + CHUNK, V);

    // top-k: the largest key with at least k values at or above it is the k-th largest value.
    uint kmin = 0;
    if (HAS_TOPK) {
        uint lo = 0, hi = 0xFFFFFFFFu;
        while (lo < hi) {
            uint mid = lo + (hi - lo) / 2 + (hi - lo) % 2;
            float n = 0.0f;
            for (int i = start; i < end; i++) {
                n += order_key(scaled_value(lp[i], tmp)) >= mid ? 1.0f : 0.0f;
            }
            if (tg_sum<TG>(n, buf, lane, sg) >= float(top_k)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        kmin = lo;
    }

    // The maximum is never filtered out; min-p compares in float32, as MLX promotes the sum.
    float top = -INFINITY;
    for (int i = start; i < end; i++) {
        top = metal::max(top, kept_value(scaled_value(lp[i], tmp), kmin, -INFINITY, 0));
    }
    top = tg_max<TG>(top, buf, lane, sg);
    float thr = HAS_MINP ? top + log_min_p : -INFINITY;

    // top-p: the smallest key whose strictly-greater mass is under top_p keeps exactly the tokens
    // with less than top_p of the mass before them.
    uint pmin = 0;
    if (HAS_TOPP) {
        float z = 0.0f;
        for (int i = start; i < end; i++) {
            z += metal::exp(kept_value(scaled_value(lp[i], tmp), kmin, thr, 0) - top);
        }
        float limit = top_p * tg_sum<TG>(z, buf, lane, sg);
        uint lo = 0, hi = 0xFFFFFFFFu;
        while (lo < hi) {
            uint mid = lo + (hi - lo) / 2;
            float mass = 0.0f;
            for (int i = start; i < end; i++) {
                float v = kept_value(scaled_value(lp[i], tmp), kmin, thr, 0);
                mass += order_key(v) > mid ? metal::exp(v - top) : 0.0f;
            }
            if (tg_sum<TG>(mass, buf, lane, sg) < limit) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        pmin = lo;
    }

    // The draw: weights exp(x - max) of the kept values, the thread's chunk sum, an exclusive scan
    // over threads, then the owning thread walks its chunk to the first inclusive sum > target.
    float m = -INFINITY;
    for (int i = start; i < end; i++) {
        m = metal::max(m, kept_value(scaled_value(lp[i], tmp), kmin, thr, pmin));
    }
    m = tg_max<TG>(m, buf, lane, sg);
    bool flat = metal::isinf(m);
    float own = 0.0f;
    for (int i = start; i < end; i++) {
        float v = kept_value(scaled_value(lp[i], tmp), kmin, thr, pmin);
        own += flat ? (v == m ? 1.0f : 0.0f) : metal::exp(v - m);
        if (WRITE_FILTERED) {
            filtered[size_t(row) * V + i] = static_cast<T>(v);
        }
    }
    float before = simd_prefix_exclusive_sum(own);
    float sg_total = simd_sum(own);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (lane == 0) {
        buf[sg] = sg_total;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float total = 0.0f;
    for (int g = 0; g < TG / 32; g++) {
        before += g < int(sg) ? buf[g] : 0.0f;
        total += buf[g];
    }
    float target = u[row] * total;

    uint pick = V;
    float c = before;
    for (int i = start; i < end && pick == uint(V); i++) {
        float v = kept_value(scaled_value(lp[i], tmp), kmin, thr, pmin);
        c += flat ? (v == m ? 1.0f : 0.0f) : metal::exp(v - m);
        if (target < c) {
            pick = i;
        }
    }
    pick = simd_min(pick);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (lane == 0) {
        ibuf[sg] = pick;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (t == 0) {
        for (int g = 0; g < TG / 32; g++) {
            pick = metal::min(pick, ibuf[g]);
        }
        // Rounding can put the target at the very end: MLX then returns the last index.
        token[row] = pick < uint(V) ? pick : uint(V - 1);
    }
"""

_kernel = None


def get_kernel():
    """The kernel, built on first use (a test replaces this to simulate a build failure)."""
    global _kernel
    if _kernel is None:
        _kernel = mx.fast.metal_kernel(
            name="macllm_sample_filter",
            input_names=["logprobs", "u", "temp", "top_k", "log_min_p", "top_p"],
            output_names=["token", "filtered"],
            source=_SOURCE,
            header=_HEADER,
        )
    return _kernel


def metal(logprobs: mx.array, u: mx.array, temperature: float, top_k: int = 0, top_p: float = 1.0,
          min_p: float = 0.0, return_filtered: bool = False):
    """The kernel; with return_filtered also the filtered scaled values (for parity checks)."""
    vocab = logprobs.shape[-1]
    batch = logprobs.shape[:-1]
    rows = logprobs.size // vocab
    dt = logprobs.dtype
    has_topk = 0 < top_k < vocab
    # log(min_p) computed by MLX in float32, exactly the number the reference adds.
    log_min_p = mx.log(mx.array(min_p if min_p > 0 else 1.0, mx.float32))
    token, filtered = get_kernel()(
        inputs=[logprobs, u.astype(mx.float32), scalar(float(temperature), dt),
                scalar(int(top_k) if has_topk else 0, mx.int32), log_min_p,
                scalar(float(top_p))],
        template=[("T", dt), ("V", vocab), ("TG", THREADS), ("HAS_TOPK", has_topk),
                  ("HAS_MINP", min_p > 0.0), ("HAS_TOPP", top_p < 1.0),
                  ("WRITE_FILTERED", return_filtered)],
        grid=(THREADS, rows, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[batch, logprobs.shape if return_filtered else (1,)],
        output_dtypes=[mx.uint32, dt],
    )
    return (token, filtered) if return_filtered else token


def supported(logprobs: mx.array) -> bool:
    return logprobs.dtype in SUPPORTED_DTYPES and logprobs.ndim >= 1 and logprobs.shape[-1] > 0


def apply(logprobs: mx.array, temperature: float, top_k: int = 0, top_p: float = 1.0,
          min_p: float = 0.0, key: mx.array | None = None) -> mx.array:
    """Filter and draw one token per row (temperature > 0): the kernel when the gate chose it, else the reference."""
    u = uniforms(logprobs, key)
    if supported(logprobs) and use_kernel(NAME):
        return metal(logprobs, u, temperature, top_k, top_p, min_p)
    return reference(logprobs, u, temperature, top_k, top_p, min_p)
