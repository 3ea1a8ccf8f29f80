"""The LoRA delta inside our quantized matmul (csrc/lora_delta.cpp, csrc/lora_avx2.cpp) against float64.

`quantized_matmul_lora` = our base product + scale * (x @ A) @ B. The base is checked in test_cpu_kernels.py;
here the delta is: every kernel variant this CPU runs (the AVX2/F16C delta rides on the avx2 and avx512
variants, the plain loops on scalar), A and B in float32, float16 and bfloat16, ranks that are and are not
multiples of 8 (a blend stacks ranks), odd output widths (the pool's runs of columns end anywhere), 4-bit
(reordered activations) and 8-bit bases, decode rows and prefill rows.

The oracle takes the A and B values the kernel reads (already in their dtype) to float64: the kernel only
widens them exactly, so the only error is float32 summation over K and r terms: allowed 8 sqrt(K + r) roundings
of the magnitudes |x| @ |A| @ |B| and |x A| @ |B| (rounding errors add up like a random walk; the worst case,
K + r roundings, would let a wrong float16 intermediate through).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from macllm import cpu_kernels
from tests.conftest import ON_CI

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)

ext = cpu_kernels.extension
ISAS = ext.available_isas()
EPS32 = 2.0 ** -24


@pytest.fixture(autouse=True)
def best_isa(float_activations):
    """Float activations here (int8 ones: test_cpu_kernels_int8.py), the best variant after each test."""
    yield
    ext.set_isa(ISAS[0])


def operands(n: int, k: int, r: int, bits: int, dtype, seed: int):
    mx.random.seed(seed)
    w, s, b = mx.quantize(mx.random.normal((n, k)) * 0.1, group_size=32, bits=bits)
    a = (mx.random.normal((k, r)) * k ** -0.5).astype(dtype)
    bb = (mx.random.normal((r, n)) * 0.05).astype(dtype)
    return w, s, b, a, bb


def check_delta(x, w, s, b, a, bb, scale: float, bits: int) -> np.ndarray:
    got = np.array(cpu_kernels.quantized_matmul_lora(x, w, s, b, a, bb, scale, 32, bits), dtype=np.float64)
    base = np.array(cpu_kernels.quantized_matmul(x, w, s, b, 32, bits), dtype=np.float64)
    x64 = np.array(x, dtype=np.float64).reshape(-1, x.shape[-1])
    a64, b64 = np.array(a.astype(mx.float32), dtype=np.float64), np.array(bb.astype(mx.float32), dtype=np.float64)
    xa = x64 @ a64
    want = base.reshape(-1, base.shape[-1]) + scale * xa @ b64
    k, r = a.shape
    magnitude = np.abs(scale) * ((np.abs(x64) @ np.abs(a64)) @ np.abs(b64) + np.abs(xa) @ np.abs(b64))
    tol = 8 * np.sqrt(k + r) * EPS32 * magnitude + 4 * EPS32 * np.abs(want) + 1e-30
    err = np.abs(got.reshape(want.shape) - want)
    assert np.all(err <= tol), f"max error beyond tolerance by {np.max(err - tol)}"
    return got


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_every_variant_adds_the_delta_of_every_rank_and_width(isa, dtype):
    ext.set_isa(isa)
    for i, (m, n, k, r, bits) in enumerate([(1, 64, 256, 8, 4), (1, 97, 128, 1, 4), (2, 33, 384, 5, 8),
                                             (3, 200, 256, 16, 4), (1, 77, 512, 24, 4), (5, 130, 256, 33, 8),
                                             (8, 41, 128, 40, 4), (1, 300, 256, 300, 4), (40, 70, 256, 12, 4)]):
        w, s, b, a, bb = operands(n, k, r, bits, dtype, seed=i)
        x = mx.random.normal((m, k))
        check_delta(x, w, s, b, a, bb, 1.5, bits)


@pytest.mark.parametrize("isa", ISAS)
def test_each_row_and_column_is_computed_alike_whatever_the_batch(isa):
    """A row's result does not depend on how many rows came with it (decode sizes: the row kernels), so a
    batched step and single steps agree to the bit, as they do without an adapter."""
    ext.set_isa(isa)
    w, s, b, a, bb = operands(90, 256, 16, 4, mx.float16, seed=20)
    x = mx.random.normal((9, 256))
    alone = np.concatenate([np.array(cpu_kernels.quantized_matmul_lora(x[i:i + 1], w, s, b, a, bb, 0.7, 32, 4))
                            for i in range(9)])
    for m in (2, 5, 9):
        np.testing.assert_array_equal(np.array(cpu_kernels.quantized_matmul_lora(x[:m], w, s, b, a, bb, 0.7, 32, 4)),
                                      alone[:m])


def test_the_simd_and_plain_deltas_agree_within_rounding():
    """The float16 adapter path that SmolLM2's GGUF takes: the F16C kernel against the plain loops."""
    if len(ISAS) == 1:
        pytest.skip("only the scalar variant runs on this CPU")
    w, s, b, a, bb = operands(576, 576, 8, 4, mx.float16, seed=30)
    x = mx.random.normal((1, 576))
    results = []
    for isa in (ISAS[0], "scalar"):
        ext.set_isa(isa)
        results.append(check_delta(x, w, s, b, a, bb, 2.0, 4))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
