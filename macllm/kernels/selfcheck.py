"""`macllm doctor --kernels`: each reference against a plain numpy formula, each kernel against its
reference (Metal only), and a micro-benchmark at decode sizes (kernel vs reference where both run).
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from macllm.kernels import KERNELS, lora_delta, residual_rms_norm, sample_filter
from macllm.kernels._common import metal_enabled

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
# Tolerances for comparisons with float32/float64 formulas: rounding of the dtype, summation order.
TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


def _np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32)).astype(np.float64)


def _rand(shape, dtype, seed, scale=1.0) -> mx.array:
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


# --- plain formulas -------------------------------------------------------------------------------
def np_residual_rms_norm(x, r, w, eps):
    h = x + r
    return h, h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * w


def np_lora_delta(y, x, a, b, scale):
    return y + scale * (x @ a) @ b


def np_filter(lp, temperature, top_k, top_p, min_p):
    """Filtered scaled log-probs of one row (float64), the documented rules written out with a sort."""
    s = lp / temperature
    keep = np.ones_like(s, dtype=bool)
    if 0 < top_k < s.size:
        keep &= s >= np.sort(s)[-top_k]
    if min_p > 0:
        keep &= s >= s[keep].max() + np.log(min_p)
    if top_p < 1.0:
        p = np.where(keep, np.exp(s - s[keep].max()), 0.0)
        p /= p.sum()
        order = np.argsort(-s, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep_sorted = np.zeros_like(keep)
        keep_sorted[order] = before < top_p
        keep &= keep_sorted
    return np.where(keep, s, -np.inf)


def np_draw(filtered, u):
    w = np.exp(filtered - filtered.max())
    cdf = np.cumsum(w) - w
    return int(np.searchsorted(cdf, u * w.sum(), side="right") - 1)


# --- cases ----------------------------------------------------------------------------------------
def _cases(name: str, dtype: mx.Dtype, bench: bool = False):
    """(inputs tuple, kwargs) at odd sizes (or one decode-sized case for the benchmark)."""
    if name == "residual_rms_norm":
        shapes = [(1, 1, 4096)] if bench else [(1, 1, 33), (2, 3, 1000), (1, 1, 4097)]
        for i, shp in enumerate(shapes):
            yield (_rand(shp, dtype, 10 + i), _rand(shp, dtype, 20 + i),
                   (1.0 + 0.1 * _rand(shp[-1:], mx.float32, 30 + i)).astype(dtype), 1e-5), {}
    elif name == "lora_delta":
        dims = [(1, 4096, 4096, 16)] if bench else [(1, 33, 71, 3), (3, 257, 1030, 8), (8, 100, 2049, 24)]
        for i, (rows, n_in, n_out, rank) in enumerate(dims):
            yield (_rand((rows, 1, n_out), dtype, 40 + i), _rand((rows, 1, n_in), dtype, 50 + i),
                   _rand((n_in, rank), dtype, 60 + i, 0.05), _rand((rank, n_out), dtype, 70 + i, 0.05),
                   2.0 if i % 2 == 0 else 1.0), {}
    elif name == "sample_filter":
        vocabs = [152064] if bench else [97, 1001, 32003]
        settings = [dict(top_k=40, top_p=0.9, min_p=0.05)] if bench else [
            dict(), dict(top_k=7), dict(min_p=0.1), dict(top_p=0.8), dict(top_k=50, top_p=0.95, min_p=0.02)]
        for i, vocab in enumerate(vocabs):
            logits = _rand((1, vocab), mx.float32, 80 + i, 3.0)
            lp = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).astype(dtype)
            for j, kw in enumerate(settings):
                u = mx.random.uniform(shape=(1,), key=mx.random.key(90 + 7 * i + j))
                yield (lp, u, 0.8), kw


HALF_TOP_P_NOTE = ("top-p in float16/bfloat16: macllm.generation.sampling sums the sorted probabilities in the "
                   "input dtype, so its nucleus differs from the exact one (and from the kernel's float32 "
                   "sums); those cases are not compared exactly")


def _check_reference(name: str, dtype_name: str) -> float:
    """Largest error of the reference against the formula (sample_filter: mismatched tokens)."""
    dtype, worst = DTYPES[dtype_name], 0.0
    for args, kw in _cases(name, dtype):
        if name == "residual_rms_norm":
            h, y = residual_rms_norm.reference(*args)
            eh, ey = np_residual_rms_norm(*map(_np, args[:3]), args[3])
            worst = max(worst, np.abs(_np(h) - eh).max(), np.abs(_np(y) - ey).max() / max(1.0, np.abs(ey).max()))
        elif name == "lora_delta":
            out = lora_delta.reference(*args)
            want = np_lora_delta(*map(_np, args[:4]), args[4])
            worst = max(worst, np.abs(_np(out) - want).max() / max(1.0, np.abs(want).max()))
        else:
            lp, u, temp = args
            filtered = sample_filter.reference_filter(lp, temp, kw.get("top_k", 0), kw.get("top_p", 1.0),
                                                      kw.get("min_p", 0.0))
            # The division is done by MLX (so the formula sees the values rounded to the dtype).
            want = np_filter(_np(lp / temp)[0], 1.0, kw.get("top_k", 0), kw.get("top_p", 1.0),
                             kw.get("min_p", 0.0))
            token = sample_filter.reference(lp, u, temp, **kw).item()
            if "top_p" in kw and dtype_name != "float32":
                continue  # see HALF_TOP_P_NOTE
            kept_ok = np.array_equal(np.isfinite(_np(filtered)[0]), np.isfinite(want))
            worst = max(worst, 0.0 if kept_ok and np.isfinite(want[token]) else 1.0)
    return float(worst)


def _check_parity(name: str, dtype_name: str) -> float:
    """Largest kernel-vs-reference difference (sample_filter: 1.0 if any token differs)."""
    mod, dtype, worst = KERNELS[name], DTYPES[dtype_name], 0.0
    for args, kw in _cases(name, dtype):
        got, want = mod.metal(*args, **kw), mod.reference(*args, **kw)
        if name == "sample_filter":
            # Top-p sums probabilities in the input dtype in the reference, in float32 in the kernel:
            # in half precision a token at the nucleus edge may legitimately flip, so only float32
            # top-p cases must match exactly.
            if "top_p" not in kw or dtype_name == "float32":
                worst = max(worst, float(got.item() != want.item()))
            continue
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            worst = max(worst, float(np.abs(_np(g) - _np(w)).max() / max(1.0, np.abs(_np(w)).max())))
    return worst


def _time_us(fn, repeat: int = 20) -> float:
    mx.eval(fn())  # warm-up (and kernel compile)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def run_all(dtype_names=("float32", "float16", "bfloat16"), bench: bool = True) -> dict:
    on_metal = metal_enabled()
    rows = []
    for name, mod in KERNELS.items():
        for dtype_name in dtype_names:
            ref_err = _check_reference(name, dtype_name)
            row = {"kernel": name, "dtype": dtype_name, "path": "metal" if on_metal else "reference",
                   "reference_vs_formula": ref_err,
                   "reference_ok": ref_err <= (0.0 if name == "sample_filter" else TOL[dtype_name]),
                   "parity": None, "parity_ok": None, "reference_us": None, "kernel_us": None, "speedup": None}
            if on_metal:
                row["parity"] = _check_parity(name, dtype_name)
                row["parity_ok"] = row["parity"] <= (0.0 if name == "sample_filter" else TOL[dtype_name])
            if bench:
                args, kw = next(_cases(name, DTYPES[dtype_name], bench=True))
                row["reference_us"] = round(_time_us(lambda: mod.reference(*args, **kw)), 1)
                if on_metal:
                    row["kernel_us"] = round(_time_us(lambda: mod.metal(*args, **kw)), 1)
                    row["speedup"] = round(row["reference_us"] / row["kernel_us"], 2)
            rows.append(row)
    ok = all(r["reference_ok"] and r["parity_ok"] is not False for r in rows)
    note = None if on_metal else "Metal kernels unavailable here (no Metal device): reference paths checked and timed"
    return {"metal": on_metal, "ok": ok, "note": note, "known_differences": [HALF_TOP_P_NOTE], "rows": rows}
