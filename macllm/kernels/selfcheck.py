"""`macllm doctor --kernels`: each reference against a plain numpy formula, each kernel against its
reference (Metal only), and a micro-benchmark at decode sizes (kernel vs reference where both run).
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from macllm.kernels import KERNELS, gate, lora_delta, residual_rms_norm, sample_filter
from macllm.kernels.parity import DTYPES, cases, tolerance, worst_difference

DRAW_NOTE = ("sample_filter: the kernel's draw may differ from the reference's when u * sum lands within float "
             "rounding of a CDF step (its prefix sums are ordered differently from mx.cumsum)")


# --- plain formulas -------------------------------------------------------------------------------
def np_residual_rms_norm(x, r, w, eps):
    h = x + r
    return h, h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * w



def as_np(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32)).astype(np.float64)

def np_lora_delta(y, x, a, b, scale):
    return y + scale * (x @ a) @ b


def np_filter(lp, temperature, top_k, top_p, min_p):
    """Filtered scaled log-probs of one row (float64), the documented rules written out with a sort
    (top-p mass in float64; equal values keep or drop together)."""
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
        first = np.r_[True, s[order][1:] != s[order][:-1]]  # equal values: the mass before the first
        before = np.maximum.accumulate(np.where(first, before, 0.0))
        keep_sorted = np.zeros_like(keep)
        keep_sorted[order] = before < top_p
        keep &= keep_sorted
    return np.where(keep, s, -np.inf)


def np_draw(filtered, u):
    w = np.exp(filtered - filtered.max())
    cdf = np.cumsum(w) - w
    return int(np.searchsorted(cdf, u * w.sum(), side="right") - 1)


def _check_reference(name: str, dtype_name: str) -> float:
    """Largest error of the reference against the formula (sample_filter: mismatched tokens)."""
    dtype, worst = DTYPES[dtype_name], 0.0
    for args, kw in cases(name, dtype):
        if name == "residual_rms_norm":
            h, y = residual_rms_norm.reference(*args)
            x, r, w, eps = args
            eh, ey = np_residual_rms_norm(as_np(x), as_np(r), as_np(w), eps)
            worst = max(worst, np.abs(as_np(h) - eh).max(), np.abs(as_np(y) - ey).max() / max(1.0, np.abs(ey).max()))
        elif name == "lora_delta":
            out = lora_delta.reference(*args)
            y, x, a, b, scale = args
            want = np_lora_delta(as_np(y), as_np(x), as_np(a), as_np(b), scale)
            worst = max(worst, np.abs(as_np(out) - want).max() / max(1.0, np.abs(want).max()))
        else:
            lp, u, temp = args
            filtered = sample_filter.reference_filter(lp, temp, kw.get("top_k", 0), kw.get("top_p", 1.0),
                                                      kw.get("min_p", 0.0))
            # The division is done by MLX (so the formula sees the values rounded to the dtype).
            want = np_filter(as_np(lp / temp)[0], 1.0, kw.get("top_k", 0), kw.get("top_p", 1.0),
                             kw.get("min_p", 0.0))
            token = sample_filter.reference(lp, u, temp, **kw).item()
            kept_ok = np.array_equal(np.isfinite(as_np(filtered)[0]), np.isfinite(want))
            worst = max(worst, 0.0 if kept_ok and np.isfinite(want[token]) else 1.0)
    return float(worst)


def _time_us(fn, args: tuple, kw: dict, repeat: int = 20) -> float:
    mx.eval(fn(*args, **kw))  # warm-up (and kernel compile)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        mx.eval(fn(*args, **kw))
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def _parity(name: str, dtype_name: str) -> tuple[float, str | None]:
    """(largest kernel-vs-reference difference, None) or (inf, the error) when the kernel fails."""
    try:
        return worst_difference(name, dtype_name), None
    except Exception as e:  # a kernel that does not build is a failed check, not a crash
        return float("inf"), f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def run_all(dtype_names=("float32", "float16", "bfloat16"), bench: bool = True) -> dict:
    on_metal = gate.metal_available()
    decisions = gate.decide_all()  # the path `apply` takes here (runs the gate's checks on Metal)
    rows = []
    for name, mod in KERNELS.items():
        for dtype_name in dtype_names:
            ref_err = _check_reference(name, dtype_name)
            row = {"kernel": name, "dtype": dtype_name, "path": decisions[name][0], "why": decisions[name][1],
                   "reference_vs_formula": ref_err, "reference_ok": ref_err <= tolerance(name, dtype_name),
                   "parity": None, "parity_ok": None, "error": None, "reference_us": None, "kernel_us": None,
                   "speedup": None}
            if on_metal:
                row["parity"], row["error"] = _parity(name, dtype_name)
                row["parity_ok"] = row["parity"] <= tolerance(name, dtype_name)
            if bench:
                args, kw = next(cases(name, DTYPES[dtype_name], "bench"))
                row["reference_us"] = round(_time_us(mod.reference, args, kw), 1)
                if on_metal and row["error"] is None:
                    row["kernel_us"] = round(_time_us(mod.metal, args, kw), 1)
                    row["speedup"] = round(row["reference_us"] / row["kernel_us"], 2)
            rows.append(row)
    ok = all(r["reference_ok"] and r["parity_ok"] is not False for r in rows)
    note = None if on_metal else "Metal kernels unavailable here (no Metal device): reference paths checked and timed"
    return {"metal": on_metal, "ok": ok, "note": note, "known_differences": [DRAW_NOTE], "rows": rows}
