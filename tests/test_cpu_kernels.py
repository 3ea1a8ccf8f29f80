"""Our CPU quantized matmul (csrc/, macllm/cpu_kernels) against mx.quantized_matmul.

The oracle is MLX's own quantized matmul on the same packed weights, computed in float32 (the
kernels compute in float32 whatever the input dtype, and round once at the end). Every kernel
variant this CPU runs is checked (AVX-512, AVX2, scalar here; NEON on arm64), over every bit width (2, 3, 4, 5, 6, 8),
all group sizes, 1..8 rows (decode) and more (prefill), odd output sizes and strided inputs.

Without the built extension these tests are skipped, except under CI=true, where set-up is expected
to have built it and its absence fails them.
"""

from __future__ import annotations

import threading

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
ROUNDING = {mx.float32: 2e-6, mx.float16: 2 ** -10, mx.bfloat16: 2 ** -7}


@pytest.fixture(autouse=True)
def best_isa(float_activations):
    """Float activations here (int8 ones: test_cpu_kernels_int8.py), the best variant after each test."""
    yield
    ext.set_isa(ISAS[0])


def packed(n: int, k: int, bits: int, group_size: int, dtype, seed: int):
    mx.random.seed(seed)
    w, scales, biases = mx.quantize(mx.random.normal((n, k)) * 0.1, group_size=group_size, bits=bits)
    return w, scales.astype(dtype), biases.astype(dtype)


def oracle(x, w, scales, biases, group_size, bits) -> np.ndarray:
    f32 = mx.float32
    ref = mx.quantized_matmul(x.astype(f32), w, scales.astype(f32), biases.astype(f32), transpose=True,
                              group_size=group_size, bits=bits)
    return np.array(ref)


def assert_close(out: mx.array, ref: np.ndarray, x: mx.array, w, scales, biases, group_size, bits):
    """Within float32 summation-order error plus one rounding to the output dtype."""
    dense = mx.dequantize(w, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group_size, bits=bits)
    magnitude = np.array(mx.abs(x.astype(mx.float32)) @ mx.abs(dense).T)  # bounds every partial sum
    tol = 1e-6 * magnitude + ROUNDING[out.dtype] * np.abs(ref) + 1e-7
    got = np.array(out.astype(mx.float32))
    worst = np.max(np.abs(got - ref) - tol)
    assert worst <= 0, f"max error beyond tolerance by {worst}"


CASES = [  # (rows, out features, in features)
    (1, 64, 256), (2, 97, 128), (3, 33, 384), (5, 1, 512), (8, 200, 640), (7, 13, 1024), (13, 50, 256), (40, 70, 384),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_every_variant_matches_mlx_on_random_shapes(isa, bits, group_size):
    ext.set_isa(isa)
    for i, (m, n, k) in enumerate(CASES):
        if k % group_size:
            continue
        for dtype in (mx.float32, mx.float16, mx.bfloat16):
            w, s, b = packed(n, k, bits, group_size, dtype, seed=i)
            x = (mx.random.normal((m, k)) * 2).astype(dtype)
            out = cpu_kernels.quantized_matmul(x, w, s, b, group_size, bits)
            assert out.shape == (m, n) and out.dtype == dtype
            assert_close(out, oracle(x, w, s, b, group_size, bits), x, w, s, b, group_size, bits)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_prefill_through_sgemm_matches_mlx(bits):
    """From prefill_rows() rows on, dequantized tiles go through OpenBLAS/Accelerate's sgemm."""
    if not ext.has_fast_sgemm():
        assert not ON_CI, "CI loads OpenBLAS before MLX: the sgemm prefill path must be there"
        pytest.skip("no OpenBLAS/Accelerate sgemm in this process")
    before = ext.prefill_rows()
    try:
        for rows_from in (1, before):
            ext.set_prefill_rows(rows_from)
            for m, n, k in [(1, 40, 256), (33, 300, 512), (64, 70, 384)]:
                for dtype in (mx.float32, mx.bfloat16):
                    w, s, b = packed(n, k, bits, 64, dtype, seed=m)
                    x = mx.random.normal((m, k)).astype(dtype)
                    out = cpu_kernels.quantized_matmul(x, w, s, b, 64, bits)
                    assert_close(out, oracle(x, w, s, b, 64, bits), x, w, s, b, 64, bits)
    finally:
        ext.set_prefill_rows(before)


def test_mixed_dtypes_promote_like_mlx():
    w, s, b = packed(48, 256, 4, 64, mx.float16, seed=3)
    x = mx.random.normal((2, 256))
    out = cpu_kernels.quantized_matmul(x, w, s, b, 64, 4)
    assert out.dtype == mx.float32  # float32 activations, float16 scales
    assert_close(out, oracle(x, w, s, b, 64, 4), x, w, s, b, 64, 4)


def test_batched_and_strided_activations():
    w, s, b = packed(40, 256, 4, 32, mx.float32, seed=4)
    base = mx.random.normal((3, 256, 4))
    x = mx.swapaxes(base, 1, 2)  # (3, 4, 256), not row-contiguous
    out = cpu_kernels.quantized_matmul(x, w, s, b, 32, 4)
    assert out.shape == (3, 4, 40)
    ref = oracle(mx.contiguous(x), w, s, b, 32, 4)
    assert_close(out, ref, x, w, s, b, 32, 4)
    one = cpu_kernels.quantized_matmul(base[0, :, 1], w, s, b, 32, 4)  # a 1-D strided vector
    assert one.shape == (40,)
    assert_close(one, oracle(base[0, :, 1], w, s, b, 32, 4), base[0, :, 1], w, s, b, 32, 4)


def test_a_whole_graph_evaluates_at_once():
    """Kernel nodes inside a larger graph (as in a decode step) with one eval."""
    w, s, b = packed(64, 128, 8, 32, mx.float32, seed=5)
    x = mx.random.normal((1, 128))
    h = mx.tanh(cpu_kernels.quantized_matmul(x, w, s, b, 32, 8))
    y = cpu_kernels.quantized_matmul(mx.concatenate([h, h], axis=-1), w, s, b, 32, 8)
    ref_h = mx.tanh(mx.quantized_matmul(x, w, s, b, group_size=32, bits=8))
    ref = mx.quantized_matmul(mx.concatenate([ref_h, ref_h], axis=-1), w, s, b, group_size=32, bits=8)
    np.testing.assert_allclose(np.array(y), np.array(ref), rtol=1e-4, atol=1e-4)


def test_gradient_in_x_matches_mlx():
    """QLoRA needs d/dx; it runs MLX's transposed quantized product (docs/training.md)."""
    w, s, b = packed(96, 256, 4, 64, mx.float32, seed=6)
    x = mx.random.normal((3, 256))
    cot = mx.random.normal((3, 96))

    def ours(v):
        return (cpu_kernels.quantized_matmul(v, w, s, b, 64, 4) * cot).sum()

    def theirs(v):
        return (mx.quantized_matmul(v, w, s, b, group_size=64, bits=4) * cot).sum()

    np.testing.assert_allclose(np.array(mx.grad(ours)(x)), np.array(mx.grad(theirs)(x)), rtol=1e-4, atol=1e-4)


def test_concurrent_streams_get_correct_results():
    """Two threads with their own CPU streams: one job holds the pool, the other runs inline."""
    w, s, b = packed(300, 512, 4, 32, mx.float32, seed=7)
    xs = [mx.random.normal((2, 512)) for _ in range(2)]
    mx.eval(xs)
    refs = [oracle(x, w, s, b, 32, 4) for x in xs]
    errors: list[str] = []

    def work(i: int):
        stream = mx.new_stream(mx.cpu)
        with mx.stream(stream):
            for _ in range(30):
                out = np.array(cpu_kernels.quantized_matmul(xs[i], w, s, b, 32, 4))
                if not np.allclose(out, refs[i], rtol=1e-4, atol=1e-4):
                    errors.append(f"thread {i}: wrong result")
                    return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.parametrize(("args", "message"), [
    (dict(bits=7), "bits must be 2, 3, 4, 5, 6 or 8"),
    (dict(group_size=16), "group_size must be 32, 64 or 128"),
    (dict(k=200), "columns"),
])
def test_bad_arguments_raise_one_line(args, message):
    w, s, b = packed(8, 256, 4, 32, mx.float32, seed=8)
    x = mx.zeros((1, args.get("k", 256)))
    with pytest.raises(ValueError, match=message):
        cpu_kernels.quantized_matmul(x, w, s, b, args.get("group_size", 32), args.get("bits", 4))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="no 'sve9' kernel"):
        ext.set_isa("sve9")


def test_use_cpu_kernel_switches_layers_in_place_with_the_same_results():
    import mlx.nn as nn

    from macllm.cpu_kernels.layers import KernelQuantizedEmbedding, KernelQuantizedLinear, use_cpu_kernel

    mx.random.seed(9)
    model = nn.Sequential(nn.Linear(128, 96, bias=True), nn.Linear(96, 64, bias=False), nn.Embedding(50, 128))
    nn.quantize(model, group_size=32, bits=4)
    x = mx.random.normal((2, 3, 128))
    ids = mx.array([[0, 7, 49]])
    looked_up = model.layers[2](ids)
    before = [model.layers[0](x), model.layers[1](model.layers[0](x)), model.layers[2].as_linear(x)]
    weight = model.layers[0]["weight"]
    assert use_cpu_kernel(model) == 3
    assert type(model.layers[0]) is KernelQuantizedLinear and type(model.layers[2]) is KernelQuantizedEmbedding
    assert model.layers[0]["weight"] is weight  # same parameters, nothing re-quantized
    after = [model.layers[0](x), model.layers[1](model.layers[0](x)), model.layers[2].as_linear(x)]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-4)
    rows = model.layers[2](ids)  # looked up in float32 (MLX's layer gives the scales' dtype)
    assert rows.dtype == mx.float32
    np.testing.assert_allclose(np.array(rows), np.array(looked_up.astype(mx.float32)), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16])
def test_lora_delta_in_the_same_node_matches_the_reference_and_its_gradients(dtype):
    """LoRALinear on a kernel-backed base: base + scale * (x A) B in one op, and the gradients QLoRA
    training takes in x, A and B (the adapter's dtype follows the layer's, as the manager casts it)."""
    w, s, b = packed(96, 256, 4, 32, dtype, seed=10)
    a = (mx.random.normal((256, 8)) * 0.05).astype(dtype)
    bb = (mx.random.normal((8, 96)) * 0.05).astype(dtype)
    x = mx.random.normal((2, 3, 256))

    def ours(x, a, bb):
        return cpu_kernels.quantized_matmul_lora(x, w, s, b, a, bb, 2.0, 32, 4)

    def reference(x, a, bb):
        f32 = mx.float32
        base = mx.quantized_matmul(x, w, s.astype(f32), b.astype(f32), group_size=32, bits=4)
        return base + 2.0 * ((x @ a.astype(f32)) @ bb.astype(f32))

    np.testing.assert_allclose(np.array(ours(x, a, bb)), np.array(reference(x, a, bb)), rtol=1e-4, atol=1e-4)
    cot = mx.random.normal((2, 3, 96))
    g_ours = mx.grad(lambda *t: (ours(*t) * cot).sum(), argnums=(0, 1, 2))(x, a, bb)
    g_ref = mx.grad(lambda *t: (reference(*t) * cot).sum(), argnums=(0, 1, 2))(x, a, bb)
    for got, want in zip(g_ours, g_ref, strict=True):
        assert got.dtype == want.dtype or want.dtype == mx.float32
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)),
                                   rtol=2e-3, atol=2e-3)


def test_lora_linear_on_a_kernel_base_takes_the_fused_path():
    import mlx.nn as nn

    from macllm.cpu_kernels.layers import use_cpu_kernel
    from macllm.lora.layers import LoRALinear

    mx.random.seed(11)
    base = nn.Sequential(nn.Linear(128, 64, bias=True))
    nn.quantize(base, group_size=64, bits=4)
    plain = LoRALinear(base.layers[0])
    a, bb = mx.random.normal((128, 8)) * 0.1, mx.random.normal((8, 64)) * 0.1
    plain.set_trainable_slot(a, bb, 0.5)
    plain.eval()
    x = mx.random.normal((1, 2, 128))
    want = np.array(plain(x))
    assert use_cpu_kernel(base) == 1
    np.testing.assert_allclose(np.array(plain(x)), want, rtol=1e-4, atol=1e-4)
