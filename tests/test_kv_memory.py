"""macllm.cache.memory counts the bytes a KV cache really holds: checked against the storage layout."""

from __future__ import annotations

import mlx.core as mx
import pytest

from macllm.cache.memory import measure
from tests import tiny_models

LAYERS, KV_HEADS, HEAD_DIM, TOKENS = 2, 2, 64, 300  # 300 > the quantized cache's 256-position threshold


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny random llama with heads 64 wide, one quantization group (the usual tiny one is 16)."""
    from macllm.loader import load_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(tiny_models.DIMS, "hidden_size", 128)
        patch.setitem(tiny_models.DIMS, "num_attention_heads", 2)
        patch.setitem(tiny_models.DIMS, "num_key_value_heads", KV_HEADS)
        folder = tiny_models.write_tiny_folder(tmp_path_factory.mktemp("kv-memory") / "tiny-llama")
    model = load_model(str(folder), progress=False).model
    assert model.layers[0].self_attn.head_dim == HEAD_DIM
    return model


@pytest.mark.parametrize("kv_bits", [None, 8, 4])
def test_measured_bytes_match_the_cache_layout(tiny_model, kv_bits):
    # Bytes per (position, head) of keys or of values: 64 float32 values, or the values packed into
    # uint32 words (HEAD_DIM * bits / 8 bytes) plus one float32 scale and one float32 bias per group of 64.
    per_head = HEAD_DIM * 4 if kv_bits is None else HEAD_DIM * kv_bits // 8 + (HEAD_DIM // 64) * (4 + 4)
    tokens = mx.random.randint(3, 200, (TOKENS,), key=mx.random.key(0)).tolist()
    result = measure(tiny_model, tokens, kv_bits)
    per_position = LAYERS * 2 * KV_HEADS * per_head  # keys and values
    assert result.filled_bytes == TOKENS * per_position
    assert result.dtypes == (["float32"] if kv_bits is None else ["float32", "uint32"])
    # Buffers grow in steps of 256 positions: whole positions, more than filled at 300.
    assert result.allocated_bytes % per_position == 0 and result.allocated_bytes > result.filled_bytes
    assert result.active_bytes >= result.allocated_bytes  # MLX's allocator sees at least those buffers
    assert result.peak_bytes >= result.active_bytes
