"""GGUF blocks read straight into MLX's affine layout: the packing matches mx.dequantize at every width,
and every exact type gives back gguf's own dequantized values."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from macllm.formats.gguf_blocks import LAYOUTS, read_exact
from macllm.quant.affine import pack_codes
from tests import tiny_gemma3


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_packed_codes_read_back_through_mx_dequantize(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (3, 128))
    packed = mx.array(pack_codes(codes, bits))
    ones, zeros = mx.ones((3, 4)), mx.zeros((3, 4))
    back = mx.dequantize(packed, ones, zeros, group_size=32, bits=bits)
    assert np.array_equal(np.array(back), codes.astype(np.float32))


def _blocks(type_name: str, rows: int, cols: int, rng) -> np.ndarray:
    import gguf

    if type_name.endswith("_K"):
        return tiny_gemma3.random_kquant(rows, cols, type_name, rng)
    weights = rng.normal(0, 0.05, (rows, cols)).astype(np.float32)
    return gguf.quants.quantize(weights, gguf.GGMLQuantizationType[type_name])


@pytest.mark.parametrize("type_name", sorted(LAYOUTS))
def test_exact_types_reproduce_llama_cpp_values(type_name):
    import gguf

    rng = np.random.default_rng(0)
    rows, cols = 8, 512
    data = _blocks(type_name, rows, cols, rng)
    packed, scales, biases, bits = read_exact(data, type_name, (rows, cols))
    assert bits == LAYOUTS[type_name].bits
    ours = mx.dequantize(mx.array(packed), mx.array(scales), mx.array(biases), group_size=32, bits=bits)
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[type_name]).reshape(rows, cols)
    assert np.array_equal(np.array(ours), theirs)


def test_a_layout_that_does_not_fit_is_refused_not_mangled():
    """Q6_K keeps two scales per 32 weights: the probes are not constant per group, so no triple."""
    data = tiny_gemma3.random_kquant(4, 256, "Q6_K", np.random.default_rng(1))
    from macllm.formats import gguf_blocks

    gguf_blocks.LAYOUTS["Q6_K"] = gguf_blocks.CodeLayout(2, 8, 0, 255)  # a wrong guess, on purpose
    try:
        assert read_exact(data, "Q6_K", (4, 256)) is None
    finally:
        del gguf_blocks.LAYOUTS["Q6_K"]
