"""Key/value caches: a buffer per layer that grows in steps, so decode appends without copying."""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    step = 256

    def __init__(self):
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append (B, heads, L, D) keys/values; return everything cached so far."""
        new = keys.shape[2]
        if self.keys is None or self.offset + new > self.keys.shape[2]:
            self._grow(keys, values, new)
        self.keys[..., self.offset:self.offset + new, :] = keys
        self.values[..., self.offset:self.offset + new, :] = values
        self.offset += new
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    def _grow(self, keys: mx.array, values: mx.array, new: int) -> None:
        b, h, _, dk = keys.shape
        dv = values.shape[3]
        extra = ((new + self.step - 1) // self.step) * self.step
        k_more = mx.zeros((b, h, extra, dk), keys.dtype)
        v_more = mx.zeros((b, h, extra, dv), values.dtype)
        if self.keys is None:
            self.keys, self.values = k_more, v_more
        else:
            used_k = self.keys[..., :self.offset, :]
            used_v = self.values[..., :self.offset, :]
            self.keys = mx.concatenate([used_k, k_more], axis=2)
            self.values = mx.concatenate([used_v, v_more], axis=2)

    def can_trim(self, n: int) -> bool:
        return True

    def reset(self) -> None:
        self.__init__()

    @property
    def nbytes(self) -> int:
        return sum(a[..., :self.offset, :].nbytes for a in self.state)

    def trim(self, n: int) -> int:
        """Forget the last n positions (for regenerate / edited prompts)."""
        n = min(self.offset, n)
        self.offset -= n
        return n

    @property
    def state(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values) if a is not None]


def make_cache(model, kv_bits: int | None = None) -> list:
    """One cache per layer. Models with special layers (Gemma's sliding windows) choose their own;
    `kv_bits` (or the model's `kv_bits` attribute, set by --kv-bits) stores keys/values quantized."""
    kv_bits = kv_bits or getattr(model, "kv_bits", None)
    if hasattr(model, "make_cache"):
        return model.make_cache(kv_bits)
    from macllm.cache_quantized import make_full_cache

    return [make_full_cache(kv_bits) for _ in range(model.num_layers)]


def cache_length(cache: list[KVCache]) -> int:
    return cache[0].offset if cache else 0


def trim_cache(cache: list[KVCache], n: int) -> bool:
    """Forget the last n positions; if some layer can no longer go back that far (a sliding window
    that dropped old positions), empty every layer instead and return False."""
    if all(c.can_trim(n) for c in cache):
        for c in cache:
            c.trim(n)
        return True
    for c in cache:
        c.reset()
    return False


def cache_nbytes(cache: list) -> int:
    return sum(c.nbytes for c in cache)
