"""The CPU kernel's int8-activation path (csrc/qmm_avx512_vnni.cpp, AVX-512 VNNI and VBMI), every bit width.

Two oracles: a numpy reference that quantizes the activations exactly as the kernel does (per block of 32,
d = absmax / 127, q = round-half-even(x * 127 / absmax)) and computes dequantize(w) times the quantized
activations in float64 from the exact integer block products: the kernel must equal it up to float32
summation order; and `mx.quantized_matmul` on the float activations: the kernel must stay within the
quantization's own bound, sum over k of |w_k| * d_block / 2. A row's result must not depend on how many
rows are computed with it (speculative decoding checks k rows where plain decoding computes one). Runs
only where the CPU has AVX-512 VNNI and VBMI.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from macllm import cpu_kernels
from macllm.errors import MacllmError
from tests import tiny_models
from tests.conftest import ON_CI

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)
ext = cpu_kernels.extension
if not ext.int8_available():
    pytest.skip("the int8 path needs a CPU with AVX-512 VNNI and VBMI", allow_module_level=True)


@pytest.fixture(autouse=True)
def int8_on():
    before = ext.int8()
    ext.set_isa(ext.available_isas()[0])
    ext.set_int8(True)
    yield
    ext.set_int8(before)


def packed(n: int, k: int, bits: int, group_size: int, dtype=mx.float32, seed: int = 0):
    mx.random.seed(seed)
    w, scales, biases = mx.quantize(mx.random.normal((n, k)) * 0.1, group_size=group_size, bits=bits)
    return w, scales.astype(dtype), biases.astype(dtype)


def quantize_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes as int64 (M, K / 32, 32), scales (M, K / 32)), as quantize_rows_int8 computes them."""
    blocks = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    absmax = np.abs(blocks).max(axis=-1)
    safe = np.where(absmax > 0, absmax, np.float32(1))
    inv = np.where(absmax > 0, np.float32(127) / safe, np.float32(0)).astype(np.float32)
    codes = np.rint((blocks * inv[..., None]).astype(np.float32)).astype(np.int64)
    return codes, (absmax / np.float32(127)).astype(np.float32)


def weight_codes(w, group_size: int, bits: int, n: int) -> np.ndarray:
    """The weights' integer codes (N, K) from MLX's own unpacking (scale 1, bias 0)."""
    ones = mx.ones((n, w.shape[1] * 32 // bits // group_size))
    return np.array(mx.dequantize(w, ones, mx.zeros_like(ones), group_size=group_size, bits=bits)).astype(np.int64)


def reference(x, w, s, b, group_size: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(the int8 path's result in float64, the sum of its terms' magnitudes: the float32 rounding scale)."""
    xf = np.array(x.astype(mx.float32)).reshape(-1, x.shape[-1])
    n = w.shape[0]
    codes, d = quantize_blocks(xf)
    wc = weight_codes(w, group_size, bits, n).reshape(n, -1, 32)
    sf = np.repeat(np.array(s.astype(mx.float32)).astype(np.float64), group_size // 32, axis=1)
    bf = np.array(b.astype(mx.float32)).astype(np.float64)
    dots = np.einsum("mbk,nbk->mnb", codes, wc)  # exact integers
    terms = dots * d.astype(np.float64)[:, None, :] * sf[None]
    # The biases' term from the quantized activations' group sums: sum of d * q over each group.
    block_sums = codes.sum(axis=-1) * d.astype(np.float64)
    xsum = block_sums.reshape(xf.shape[0], -1, group_size // 32).sum(axis=-1)
    return terms.sum(axis=-1) + xsum @ bf.T, np.abs(terms).sum(axis=-1) + np.abs(xsum) @ np.abs(bf).T


def run(x, w, s, b, group_size, bits) -> np.ndarray:
    out = cpu_kernels.quantized_matmul(x, w, s, b, group_size, bits)
    return np.array(out.astype(mx.float32)).reshape(-1, w.shape[0])


ROUNDING = {mx.float32: 0.0, mx.bfloat16: 2 ** -8}  # the one rounding of the float32 result to the output's dtype


def assert_equals_reference(x, w, s, b, group_size, bits):
    got = run(x, w, s, b, group_size, bits)
    want, magnitude = reference(x, w, s, b, group_size, bits)
    worst = np.max(np.abs(got - want) - (2e-6 * magnitude + ROUNDING[x.dtype] * np.abs(want) + 1e-30))
    assert worst <= 0, f"beyond float32 summation rounding by {worst}"


CASES = [  # (rows, out features, in features): odd N, odd block counts (96, 160, 416, 1120), 1..8 rows
    (1, 64, 256), (2, 97, 128), (3, 33, 384), (4, 5, 96), (5, 1, 512), (6, 31, 160), (7, 13, 1024), (8, 200, 640),
    (8, 19, 416), (3, 29, 1120),  # 1120: two of the kernel's 512-value chunks and an odd tail of 3 blocks
    (2, 21, 896),  # a chunk and 12 blocks, which the kernel computes as a padded chunk (256, 384, 416 too)
]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_equals_a_reference_that_quantizes_activations_the_same_way(bits, group_size):
    for i, (m, n, k) in enumerate(CASES):
        if k % group_size:
            continue
        for dtype in (mx.float32, mx.bfloat16):
            w, s, b = packed(n, k, bits, group_size, dtype, seed=i)
            x = (mx.random.normal((m, k)) * 3).astype(dtype)
            assert_equals_reference(x, w, s, b, group_size, bits)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_special_activations(bits):
    """Zero rows and blocks, huge values, all-equal blocks, a lone spike among tiny values, halves."""
    k, n = 256, 45
    w, s, b = packed(n, k, bits, 64, seed=3)
    rows = np.random.default_rng(0).normal(size=(8, k)).astype(np.float32)
    rows[0] = 0.0
    rows[1, 32:64] = 0.0
    rows[2] *= 1e30
    rows[3, :32] = 0.75
    rows[3, 32:64] = -2.5
    rows[4] = 1e-3
    rows[4, 7] = 80.0
    rows[5] = np.arange(k) % 2 * 0.5 + 0.5  # many values a half-step from a code: ties round to even
    rows[6] *= 1e-30
    x = mx.array(rows)
    assert_equals_reference(x, w, s, b, 64, bits)
    got = run(x, w, s, b, 64, bits)
    assert np.all(np.isfinite(got))
    np.testing.assert_array_equal(got[0], np.zeros(n, np.float32))  # x = 0: every term is exactly 0


def test_a_non_finite_activation_gives_nan_not_a_wrong_number():
    w, s, b = packed(16, 128, 4, 32, seed=4)
    rows = np.random.default_rng(1).normal(size=(3, 128)).astype(np.float32)
    rows[0, 5] = np.inf
    rows[1, 70] = np.nan
    got = run(mx.array(rows), w, s, b, 32, 4)
    assert np.all(np.isnan(got[0])) and np.all(np.isnan(got[1]))
    assert np.all(np.isfinite(got[2]))


@pytest.mark.parametrize("bits", [2, 4, 5, 8])
@pytest.mark.parametrize("group_size", [32, 128])
def test_within_the_quantization_bound_of_mx_quantized_matmul(bits, group_size):
    """|ours - mx.quantized_matmul| <= sum_k |w_k| * d_block / 2 (w dequantized), plus float32 rounding."""
    m, n, k = 5, 77, 1024
    w, s, b = packed(n, k, bits, group_size, seed=5)
    x = mx.random.normal((m, k)) * 2
    got = run(x, w, s, b, group_size, bits)
    want = np.array(mx.quantized_matmul(x, w, s, b, transpose=True, group_size=group_size, bits=bits))
    dense = np.abs(np.array(mx.dequantize(w, s, b, group_size=group_size, bits=bits))).astype(np.float64)  # (N, K)
    _, d = quantize_blocks(np.array(x))
    half_step = np.repeat(d.astype(np.float64) / 2, 32, axis=1)  # (M, K)
    bound = half_step @ dense.T
    magnitude = np.abs(np.array(x)) @ dense.T
    excess = np.abs(got - want) - (bound + 4e-6 * magnitude)
    assert np.max(excess) <= 0, f"beyond the quantization bound by {np.max(excess)}"
    assert np.max(np.abs(got - want)) > 0  # the int8 path really ran (float32 would agree to rounding)


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("group_size", [32, 64])
def test_a_rows_result_does_not_depend_on_the_row_count(bits, group_size):
    """Bit for bit: rows computed one at a time, 2..8 at once, and 13 (8 + 5) at once."""
    n, k = 53, 480 if group_size == 32 else 512
    w, s, b = packed(n, k, bits, group_size, seed=6)
    x = mx.random.normal((13, k))
    alone = np.concatenate([run(x[i:i + 1], w, s, b, group_size, bits) for i in range(13)])
    for m in range(2, 9):
        np.testing.assert_array_equal(run(x[:m], w, s, b, group_size, bits), alone[:m])
    np.testing.assert_array_equal(run(x, w, s, b, group_size, bits), alone)


def test_lora_delta_rides_on_the_int8_rows():
    w, s, b = packed(64, 256, 4, 32, seed=8)
    a, bb = mx.random.normal((256, 8)) * 0.05, mx.random.normal((8, 64)) * 0.05
    x = mx.random.normal((2, 256))
    got = np.array(cpu_kernels.quantized_matmul_lora(x, w, s, b, a, bb, 2.0, 32, 4))
    want = run(x, w, s, b, 32, 4) + np.array(2.0 * ((x @ a) @ bb))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_other_variants_and_prefill_keep_float_activations():
    """int8 applies to the avx512 variant's row kernels only: AVX2 and the sgemm prefill stay float."""
    w, s, b = packed(40, 256, 4, 32, seed=9)
    x = mx.random.normal((3, 256))
    ext.set_isa("avx2")
    avx2 = run(x, w, s, b, 32, 4)
    ext.set_int8(False)
    np.testing.assert_array_equal(avx2, run(x, w, s, b, 32, 4))
    ext.set_isa(ext.available_isas()[0])
    if ext.has_fast_sgemm():
        ext.set_int8(True)
        before = ext.prefill_rows()
        try:
            ext.set_prefill_rows(1)
            on = run(x, w, s, b, 32, 4)
            ext.set_int8(False)
            np.testing.assert_array_equal(on, run(x, w, s, b, 32, 4))
        finally:
            ext.set_prefill_rows(before)


def test_prompts_under_160_rows_take_the_int8_row_kernels_by_default():
    """The default threshold (set_prefill_rows(-1)) follows the activations: on int8 ones, 32-159 rows go
    through the row kernels (the int8 reference, bit for bit what set_prefill_rows(0) computes) and 160 on
    through the float sgemm tiles; on float ones the tiles start at 32 rows."""
    if not ext.has_fast_sgemm():
        pytest.skip("no OpenBLAS/Accelerate sgemm in this process")
    before = ext.prefill_rows()
    w, s, b = packed(48, 256, 4, 32, seed=11)
    try:
        for m, tiles in ((40, False), (159, False), (160, True)):
            x = mx.random.normal((m, 256))
            ext.set_prefill_rows(-1)
            default = run(x, w, s, b, 32, 4)
            ext.set_prefill_rows(1 if tiles else 0)
            np.testing.assert_array_equal(default, run(x, w, s, b, 32, 4))
            if not tiles:
                assert_equals_reference(x, w, s, b, 32, 4)
        ext.set_int8(False)
        x = mx.random.normal((40, 256))
        ext.set_prefill_rows(-1)
        default = run(x, w, s, b, 32, 4)
        ext.set_prefill_rows(1)
        np.testing.assert_array_equal(default, run(x, w, s, b, 32, 4))
    finally:
        ext.set_prefill_rows(before)


@pytest.mark.parametrize(("value", "on"), [("on", True), ("off", False), ("", cpu_kernels.INT8_BY_DEFAULT),
                                           ("auto", cpu_kernels.INT8_BY_DEFAULT)])
def test_the_environment_switch(monkeypatch, value, on):
    monkeypatch.setenv(cpu_kernels.INT8_ENV, value)
    assert cpu_kernels.apply_int8() is on and ext.int8() is on
    assert cpu_kernels.summary().endswith("int8 activations") is on


def test_a_bad_switch_value_is_one_line(monkeypatch):
    monkeypatch.setenv(cpu_kernels.INT8_ENV, "yes")
    with pytest.raises(MacllmError, match="MACLLM_CPU_INT8='yes' is not valid: use one of auto, on, off"):
        cpu_kernels.apply_int8()


def lively_quantized(path, *noise: tuple[float, int]):
    """The tiny float model with noise (scale, seed) on every weight (it repeats one token otherwise),
    then quantized to 4 bits, group 32, and put on the kernel."""
    import mlx.nn as nn

    from macllm.cpu_kernels.layers import use_cpu_kernel

    lm = tiny_models.perturbed(path, *noise)
    nn.quantize(lm.model, group_size=32, bits=4,
                class_predicate=lambda _, m: isinstance(m, nn.Linear) and m.weight.shape[1] % 32 == 0)
    assert use_cpu_kernel(lm.model) > 0
    return lm


def test_speculative_greedy_is_plain_greedy_on_int8_rows(tiny_llama_gguf):
    """The checks of k guesses run k + 1 rows where plain decoding runs one: the tokens must not change."""
    from macllm.generation import GenerationParams, generate
    from macllm.generation import speculative as spec

    target = lively_quantized(tiny_llama_gguf, (0.3, 7))
    draft = lively_quantized(tiny_llama_gguf, (0.3, 7), (0.02, 1))
    kept = 0
    for text in ["hello world user", "the world is a user of hello"]:
        ids = target.tokenizer.encode(text)
        plain = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40))
        drafted = generate(target.model, target.tokenizer, ids, GenerationParams(max_tokens=40),
                           draft=spec.DraftModel(draft.model, draft.tokenizer))
        assert drafted.token_ids == plain.token_ids
        assert len(set(plain.token_ids)) > 10
        kept += drafted.stats.draft_accepted
    assert kept > 0  # some checks really covered several rows
