"""Mixture-of-experts projections on our CPU kernel against mx.gather_qmm.

The oracle is MLX's own gathered quantized matmul on the same packed experts: the decode layout (one
row broadcast over each token's k experts), the sorted prefill layout (runs of rows per expert), every
bit width and group size, float16 scales, the gradient in x, and whole MoE models (ours and mlx-lm's
class) giving the same logits with the kernel as without it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from macllm import cpu_kernels
from macllm.cpu_kernels.layers import use_cpu_kernel
from macllm.models.qwen3_moe import KernelQuantizedSwitchLinear, QuantizedSwitchLinear
from tests.conftest import ON_CI

if cpu_kernels.extension is None:
    if ON_CI:
        pytest.fail(f"the CPU kernels must be built on CI: {cpu_kernels.build_status}", pytrace=False)
    pytest.skip(f"CPU kernels unavailable: {cpu_kernels.build_status}", allow_module_level=True)


def experts(e: int, n: int, k: int, bits: int, group_size: int, scale_dtype=mx.float32, seed: int = 0):
    mx.random.seed(seed)
    w, s, b = mx.quantize(mx.random.normal((e, n, k)) * 0.1, group_size=group_size, bits=bits)
    return w, s.astype(scale_dtype), b.astype(scale_dtype)


def reference(x, w, s, b, indices, group_size, bits, sorted_indices=False):
    return mx.gather_qmm(x, w, s.astype(x.dtype), b.astype(x.dtype), rhs_indices=indices, transpose=True,
                         group_size=group_size, bits=bits, sorted_indices=sorted_indices)


def close(a, b, tol=2e-5):
    assert a.shape == b.shape
    assert mx.abs(a - b).max().item() <= tol * max(1.0, mx.abs(b).max().item())


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_decode_layout_matches_gather_qmm(bits, group_size):
    w, s, b = experts(8, 72, 256, bits, group_size, seed=bits)
    x = mx.random.normal((2, 3, 1, 1, 256))  # (batch, tokens, 1, 1, dims): one row per token
    indices = mx.random.randint(0, 8, (2, 3, 2)).astype(mx.uint32)  # top-2 experts per token
    close(cpu_kernels.gather_quantized_matmul(x, w, s, b, indices, group_size, bits),
          reference(x, w, s, b, indices, group_size, bits))


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_sorted_prefill_layout_shares_runs_of_one_expert(bits):
    w, s, b = experts(5, 40, 64, bits, 32, scale_dtype=mx.float16)
    x = mx.random.normal((21, 1, 64))
    indices = mx.sort(mx.random.randint(0, 5, (21,))).astype(mx.int32)
    close(cpu_kernels.gather_quantized_matmul(x, w, s, b, indices, 32, bits),
          reference(x, w, s, b, indices, 32, bits, sorted_indices=True))


def test_several_rows_per_expert_and_unsorted_indices():
    w, s, b = experts(4, 33, 96, 4, 32)
    x = mx.random.normal((6, 3, 96))  # three rows per batch item
    indices = mx.array([3, 0, 0, 2, 1, 3], dtype=mx.uint32)
    close(cpu_kernels.gather_quantized_matmul(x, w, s, b, indices, 32, 4), reference(x, w, s, b, indices, 32, 4))


def test_gradient_in_x_is_gather_qmms():
    w, s, b = experts(6, 40, 64, 4, 32)
    x = mx.random.normal((2, 1, 1, 64))
    indices = mx.array([[1, 4], [5, 0]], dtype=mx.uint32)

    def ours(x):
        return (cpu_kernels.gather_quantized_matmul(x, w, s, b, indices, 32, 4) ** 2).sum()

    def theirs(x):
        return (reference(x, w, s, b, indices, 32, 4) ** 2).sum()

    close(mx.grad(ours)(x), mx.grad(theirs)(x), 1e-4)


def test_an_impossible_expert_comes_out_nan_not_a_plausible_number():
    w, s, b = experts(3, 8, 32, 4, 32)
    out = cpu_kernels.gather_quantized_matmul(mx.ones((2, 1, 32)), w, s, b, mx.array([1, 7], dtype=mx.uint32), 32, 4)
    assert not mx.isnan(out[0]).any().item() and mx.isnan(out[1]).all().item()


def test_bad_shapes_are_refused_in_one_line():
    w, s, b = experts(3, 8, 32, 4, 32)
    with pytest.raises(ValueError, match="last dimension"):
        cpu_kernels.gather_quantized_matmul(mx.ones((1, 1, 64)), w, s, b, mx.array([0]), 32, 4)
    with pytest.raises(ValueError, match="integers"):
        cpu_kernels.gather_quantized_matmul(mx.ones((1, 1, 32)), w, s, b, mx.array([0.5]), 32, 4)


def test_our_experts_layer_switches_to_the_kernel_and_agrees():
    mx.random.seed(3)
    layer = QuantizedSwitchLinear(mx.random.normal((4, 24, 64)) * 0.1, 32, 4)
    holder = nn.Sequential(layer)
    x, indices = mx.random.normal((3, 1, 1, 64)), mx.array([[0, 3], [2, 2], [1, 0]], dtype=mx.uint32)
    before = layer(x, indices)
    assert use_cpu_kernel(holder) == 1 and type(layer) is KernelQuantizedSwitchLinear
    close(layer(x, indices), before)


def test_mlx_lm_experts_switch_to_the_kernel_and_agree():
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear as MlxLmExperts

    mx.random.seed(4)
    layer = MlxLmExperts(64, 24, 4, bias=True, group_size=32, bits=4)
    layer.bias = mx.random.normal((4, 24))
    holder = nn.Sequential(layer)
    x, indices = mx.random.normal((3, 1, 1, 64)), mx.array([[0, 3], [2, 2], [1, 0]], dtype=mx.uint32)
    before = layer(x, indices)
    assert use_cpu_kernel(holder) == 1 and type(layer).__name__ == "KernelQuantizedSwitchLinear"
    close(layer(x, indices), before)
