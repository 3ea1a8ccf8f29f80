"""A model's cache is a list of per-layer caches; these work on the whole list."""

from __future__ import annotations

from macllm.cache.base import LayerCache
from macllm.cache.quantized import make_full_cache


def make_cache(model, kv_bits: int | None = None) -> list[LayerCache]:
    """One cache per layer. Models with special layers (Gemma's sliding windows) choose their own;
    `kv_bits` stores keys/values quantized (8 or 4 bits)."""
    if hasattr(model, "make_cache"):
        return model.make_cache(kv_bits)
    return [make_full_cache(kv_bits) for _ in range(model.num_layers)]


def cache_length(cache: list[LayerCache]) -> int:
    return cache[0].offset if cache else 0


def trim_cache(cache: list[LayerCache], n: int) -> bool:
    """Forget the last n positions; if some layer can no longer go back that far (a sliding window
    that dropped old positions), empty every layer instead and return False."""
    if all(c.can_trim(n) for c in cache):
        for c in cache:
            c.trim(n)
        return True
    for c in cache:
        c.reset()
    return False


def cache_nbytes(cache: list[LayerCache]) -> int:
    return sum(c.nbytes for c in cache)
