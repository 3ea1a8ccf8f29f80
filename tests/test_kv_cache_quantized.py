"""Quantized KV cache: full precision below the threshold, quantized storage past it, close results."""

from __future__ import annotations

import mlx.core as mx

from macllm.cache import KVCache, cache_nbytes, make_cache
from macllm.cache.quantized import QuantizedKVCache


def fill(cache, n, d=64, seed=0):
    keys = mx.random.normal((1, 2, n, d), key=mx.random.key(seed))
    values = mx.random.normal((1, 2, n, d), key=mx.random.key(seed + 1))
    out = None
    for i in range(0, n, 100):
        out = cache.update(keys[:, :, i:i + 100], values[:, :, i:i + 100])
    return keys, values, out


def test_quantized_cache_reads_back_close_and_is_smaller():
    full, q8 = KVCache(), QuantizedKVCache(8)
    keys, values, (k8, v8) = fill(q8, 1000)
    fill(full, 1000)
    assert q8.full is None and q8.offset == 1000
    assert mx.abs(k8 - keys).max().item() < 0.05 and mx.abs(v8 - values).max().item() < 0.05
    assert q8.nbytes < 0.3 * full.nbytes  # float32 -> 8 bits + scales
    q8.trim(10)
    k, _ = q8.update(keys[:, :, :1], values[:, :, :1])
    assert k.shape[2] == 991


def test_short_context_stays_full_precision():
    q4 = QuantizedKVCache(4)
    keys, _, (k, _) = fill(q4, 200)
    assert q4.full is not None and mx.array_equal(k, keys).item()


def test_generation_with_8_bit_kv_matches(tiny_llama_folder):
    from macllm.loader import load_model

    model = load_model(str(tiny_llama_folder), progress=False).model
    tokens = mx.random.randint(3, 200, (1, 400), key=mx.random.key(1))
    plain, quant = make_cache(model), make_cache(model, kv_bits=8)
    a = mx.concatenate([model(tokens[:, i:i + 100], cache=plain) for i in range(0, 400, 100)], axis=1)
    b = mx.concatenate([model(tokens[:, i:i + 100], cache=quant) for i in range(0, 400, 100)], axis=1)
    assert isinstance(quant[0], QuantizedKVCache)
    assert (mx.argmax(a, -1) == mx.argmax(b, -1)).mean().item() > 0.97
    # The tiny model's heads (16 wide) are narrower than a quantization group: they stay full precision.
    assert cache_nbytes(quant) == cache_nbytes(plain)
