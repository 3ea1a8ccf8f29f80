"""KV caches: one per layer (full, sliding-window, quantized), all `LayerCache`s; `ops` handles the list."""

from macllm.cache.base import LayerCache
from macllm.cache.full import KVCache
from macllm.cache.ops import cache_length, cache_nbytes, make_cache, trim_cache

__all__ = ["KVCache", "LayerCache", "cache_length", "cache_nbytes", "make_cache", "trim_cache"]
