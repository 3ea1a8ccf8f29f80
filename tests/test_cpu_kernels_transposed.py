"""The transposed product cot @ dequantize(w) (csrc/qmm_transposed.cpp) against mx.quantized_matmul with
transpose=False: every bit width and group size, the BLAS tile path and the plain loop, float16 scales
and cotangents; and the kernel layer's gradient in x, which is this product, against MLX's gradient of
its own quantized layer.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from macllm import cpu_kernels
from macllm.cpu_kernels.layers import KernelQuantizedLinear
from tests.conftest import ON_CI

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)

ext = cpu_kernels.extension


@pytest.fixture(params=["sgemm", "loop"])
def blas(request):
    before = ext.prefill_rows()
    ext.set_prefill_rows(0 if request.param == "loop" else max(before, 32))
    yield request.param
    ext.set_prefill_rows(before)


def close(a, b, tol=2e-5):
    assert a.shape == b.shape
    assert mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item() <= tol * max(1.0, mx.abs(b).max().item())


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_matches_mlx_transposed_quantized_matmul(bits, group_size, blas):
    mx.random.seed(bits * group_size)
    w, s, b = mx.quantize(mx.random.normal((70, 384)), group_size=group_size, bits=bits)
    cot = mx.random.normal((2, 9, 70))
    close(ext.quantized_matmul_transposed(cot, w, s, b, group_size, bits),
          mx.quantized_matmul(cot, w, s, b, transpose=False, group_size=group_size, bits=bits))


def test_half_precision_scales_and_cotangent(blas):
    mx.random.seed(1)
    w, s, b = mx.quantize(mx.random.normal((64, 128)), group_size=64, bits=4)
    s16, b16 = s.astype(mx.float16), b.astype(mx.float16)
    cot = mx.random.normal((5, 64)).astype(mx.float16)
    out = ext.quantized_matmul_transposed(cot, w, s16, b16, 64, 4)
    assert out.dtype == mx.float16
    expected = mx.quantized_matmul(cot.astype(mx.float32), w, s16.astype(mx.float32), b16.astype(mx.float32),
                                   transpose=False, group_size=64, bits=4)
    close(out, expected, 2e-3)


@pytest.mark.usefixtures("float_activations")
def test_the_kernel_layers_gradient_is_mlxs():
    mx.random.seed(2)
    layer = nn.QuantizedLinear(256, 96, bias=False, group_size=32, bits=4)
    x = mx.random.normal((4, 7, 256))
    expected = mx.grad(lambda x: (layer(x) ** 2).sum())(x)
    layer.__class__ = KernelQuantizedLinear
    close(mx.grad(lambda x: (layer(x) ** 2).sum())(x), expected, 1e-4)


def test_bad_shapes_are_refused_in_one_line():
    w, s, b = mx.quantize(mx.random.normal((64, 128)), group_size=64, bits=4)
    with pytest.raises(ValueError, match="w's rows"):
        ext.quantized_matmul_transposed(mx.ones((2, 63)), w, s, b, 64, 4)
