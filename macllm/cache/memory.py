"""The KV cache's memory, measured rather than computed: prefill tokens into a fresh cache, then add up
the `.nbytes` of every array the per-layer caches hold, next to MLX's own allocator counters.

Caches grow in steps of 256 positions, so two sizes are reported: `allocated` (whole buffers) and
`filled` (only the positions stored so far). `.nbytes` counts an array's logical size; a slice that
still shares a bigger buffer shows up only in MLX's `active` figure, which is why both are given.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass

import mlx.core as mx

from macllm.cache import make_cache

CHUNK = 256  # prefill step, as in macllm.quant.perplexity


@dataclass
class KVMemory:
    kv_bits: int | None
    tokens: int
    dtypes: list[str]  # of the arrays held (e.g. uint32 values + float32 scales/biases)
    allocated_bytes: int
    filled_bytes: int
    active_bytes: int  # MLX active memory after the prefill minus before it: the cache's real buffers
    peak_bytes: int  # MLX peak memory during the prefill minus before it: cache + activations + logits

    def as_dict(self) -> dict:
        return asdict(self)


def cache_bytes(cache: list) -> tuple[int, int]:
    """(allocated, filled) bytes of every array held by a list of per-layer caches.

    Arrays are (batch, heads, positions, width); a layer's filled positions are its first
    `offset - start` (`start` > 0 only for a sliding window that dropped old positions).
    """
    allocated = filled = 0
    for layer in cache:
        kept = layer.offset - getattr(layer, "start", 0)
        for array in layer.state:
            allocated += array.nbytes
            filled += array[..., :kept, :].nbytes
    return allocated, filled


def measure(model, tokens: list[int], kv_bits: int | None = None, chunk: int = CHUNK) -> KVMemory:
    """Prefill `tokens` in chunks into a fresh `make_cache(model, kv_bits)` and measure what it holds."""
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    cache = make_cache(model, kv_bits)
    for start in range(0, len(tokens), chunk):
        logits = model(mx.array(tokens[start:start + chunk])[None], cache=cache)
        mx.eval(logits, [layer.state for layer in cache])
        del logits
    gc.collect()
    active, peak = mx.get_active_memory() - before, mx.get_peak_memory() - before
    allocated, filled = cache_bytes(cache)
    dtypes = sorted({str(a.dtype).removeprefix("mlx.core.") for layer in cache for a in layer.state})
    return KVMemory(kv_bits, len(tokens), dtypes, allocated, filled, active, peak)
