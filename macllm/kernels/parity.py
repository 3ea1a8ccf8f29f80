"""Kernel against reference on fixed inputs: the cases, the comparison, the tolerances.

Used by the gate before a kernel is first used on Metal (the "small" cases, every supported dtype)
and by `macllm doctor --kernels` (the "odd" sizes, and one decode-sized "bench" case for timing).
Inputs come from fixed keys, so a check is deterministic and leaves MLX's global random state alone.
"""

from __future__ import annotations

from typing import Iterator

import mlx.core as mx

from macllm.kernels import lora_delta, residual_rms_norm, sample_filter
from macllm.kernels.gate import Probe

MODULES = {"lora_delta": lora_delta, "sample_filter": sample_filter, "residual_rms_norm": residual_rms_norm}
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
# Largest difference allowed, relative to max(1, |reference|): the dtype's rounding and a different
# summation order. sample_filter's tokens must match exactly.
TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}

Case = tuple[tuple, dict]




def rand(shape, dtype, seed: int, scale: float = 1.0) -> mx.array:
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(dtype)


def _norm_cases(dtype, size: str) -> Iterator[Case]:
    shapes = {"small": [(1, 1, 33), (2, 1, 1000)], "odd": [(1, 1, 33), (2, 3, 1000), (1, 1, 4097)],
              "bench": [(1, 1, 4096)]}[size]
    for i, shp in enumerate(shapes):
        yield (rand(shp, dtype, 10 + i), rand(shp, dtype, 20 + i),
               (1.0 + 0.1 * rand(shp[-1:], mx.float32, 30 + i)).astype(dtype), 1e-5), {}


def _lora_cases(dtype, size: str) -> Iterator[Case]:
    dims = {"small": [(1, 33, 71, 3), (3, 257, 1030, 8)],
            "odd": [(1, 33, 71, 3), (3, 257, 1030, 8), (8, 100, 2049, 24)],
            "bench": [(1, 4096, 4096, 16)]}[size]
    for i, (rows, n_in, n_out, rank) in enumerate(dims):
        yield (rand((rows, 1, n_out), dtype, 40 + i), rand((rows, 1, n_in), dtype, 50 + i),
               rand((n_in, rank), dtype, 60 + i, 0.05), rand((rank, n_out), dtype, 70 + i, 0.05),
               2.0 if i % 2 == 0 else 1.0), {}


def _sample_cases(dtype, size: str) -> Iterator[Case]:
    every_filter: dict = dict(top_k=50, top_p=0.95, min_p=0.02)
    vocabs = {"small": [1001], "odd": [97, 1001, 32003], "bench": [152064]}[size]
    settings_by_size: dict[str, list[dict]] = {
        "small": [{}, every_filter],
        "odd": [{}, dict(top_k=7), dict(min_p=0.1), dict(top_p=0.8), every_filter],
        "bench": [dict(top_k=40, top_p=0.9, min_p=0.05)]}
    settings = settings_by_size[size]
    for i, vocab in enumerate(vocabs):
        logits = rand((1, vocab), mx.float32, 80 + i, 3.0)
        lp = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).astype(dtype)
        for j, kw in enumerate(settings):
            u = mx.random.uniform(shape=(1,), key=mx.random.key(90 + 7 * i + j))
            yield (lp, u, 0.8), kw


_CASES = {"residual_rms_norm": _norm_cases, "lora_delta": _lora_cases, "sample_filter": _sample_cases}


def cases(name: str, dtype: mx.Dtype, size: str = "odd") -> Iterator[Case]:
    """(positional args, keyword args) for the kernel's `metal` and `reference`."""
    return _CASES[name](dtype, size)


def tolerance(name: str, dtype_name: str) -> float:
    return 0.0 if name == "sample_filter" else TOL[dtype_name]


def difference(name: str, got, want) -> float:
    """Largest relative difference of the outputs (sample_filter: 1.0 if the tokens differ)."""
    if name == "sample_filter":
        return float(got.item() != want.item())
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape or g.dtype != w.dtype:
            return float("inf")
        # float32 holds every supported dtype exactly; MLX rather than numpy keeps numpy off the start-up path.
        ref = w.astype(mx.float32)
        diff = mx.abs(g.astype(mx.float32) - ref).max() / mx.maximum(mx.abs(ref).max(), 1.0)
        worst = max(worst, float(diff.item()))  # type: ignore[arg-type]  # .item() is a float here
    return worst


def worst_difference(name: str, dtype_name: str, size: str = "odd") -> float:
    """Kernel against reference over the cases (looked up at call time: a test may replace `metal`)."""
    module, worst = MODULES[name], 0.0
    for args, kw in cases(name, DTYPES[dtype_name], size):
        worst = max(worst, difference(name, module.metal(*args, **kw), module.reference(*args, **kw)))
    return worst


def probe(name: str) -> Probe:
    """The gate's check for one kernel: the small cases in every supported dtype."""

    def run(compare: bool) -> str | None:
        for dtype_name, dtype in DTYPES.items():
            if not compare:  # MACLLM_KERNELS=on: only make sure it builds and runs
                for args, kw in cases(name, dtype, "small"):
                    mx.eval(MODULES[name].metal(*args, **kw))
                continue
            worst, tol = worst_difference(name, dtype_name, "small"), tolerance(name, dtype_name)
            if not worst <= tol:  # (NaN counts as a mismatch)
                return f"{dtype_name}: difference {worst:.3g} > tolerance {tol:g}"
        return None

    return run
