"""A KV cache stored quantized (MLX affine, group 64, 8 or 4 bits) once the context passes a threshold.

Short contexts stay in full precision: their cache is small and quantizing it would only cost accuracy.
Past `threshold` positions, everything cached is quantized and new keys/values are quantized as they
arrive; attention reads them dequantized (dequantize-on-read), so the model code is unchanged.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.base import BufferedCache
from macllm.cache.full import KVCache

KV_BITS = (8, 4)
GROUP_SIZE = 64
THRESHOLD = 256


class QuantizedKVCache(BufferedCache):
    def __init__(self, bits: int, group_size: int = GROUP_SIZE, threshold: int = THRESHOLD):
        self.bits, self.group_size, self.threshold = bits, group_size, threshold
        self.full: KVCache | None = KVCache()  # used until the threshold; None once quantized
        self.quantized: list[mx.array] | None = None  # [k_packed, k_scales, k_biases, v_packed, v_scales, v_biases]
        self.offset = 0
        self.dtype: mx.Dtype = mx.float32  # the keys' dtype, set by every update

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        new = keys.shape[2]
        self.dtype = keys.dtype
        # A head width the groups do not divide never switches, so `full` is still there for it.
        if self.full is not None and (self.offset + new <= self.threshold or keys.shape[-1] % self.group_size):
            k, v = self.full.update(keys, values)
            self.offset = self.full.offset
            return k, v
        quantized = self.quantized if self.quantized is not None else self._switch_to_quantized()
        parts = self._quantize(keys) + self._quantize(values)
        if self.offset + new > quantized[0].shape[2]:
            quantized = self._grow(quantized, parts, new)
        for buf, part in zip(quantized, parts, strict=True):
            buf[..., self.offset:self.offset + new, :] = part
        self.offset += new
        return self._read(quantized, 0), self._read(quantized, 3)

    def _quantize(self, x: mx.array) -> list[mx.array]:
        return list(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def _read(self, quantized: list[mx.array], first: int) -> mx.array:
        packed, scales, biases = (a[..., :self.offset, :] for a in quantized[first:first + 3])
        return mx.dequantize(packed, scales, biases, group_size=self.group_size, bits=self.bits).astype(self.dtype)

    def _switch_to_quantized(self) -> list[mx.array]:
        full = self.full
        quantized = [p[..., :0, :] for p in self._quantize(mx.zeros((1, 1, 1, self.group_size)))] * 2
        if full is not None and full.keys is not None and full.values is not None and full.offset:
            n = full.offset
            parts = self._quantize(full.keys[..., :n, :]) + self._quantize(full.values[..., :n, :])
            quantized = self._grow(list(parts), parts, 0)
        self.full = None
        return quantized

    def _grow(self, quantized: list[mx.array], like: list[mx.array], new: int) -> list[mx.array]:
        """`quantized`'s first `offset` positions followed by room for `new` more; becomes `self.quantized`."""
        extra = ((new + self.step - 1) // self.step + 1) * self.step
        grown = []
        for buf, part in zip(quantized, like, strict=True):
            b, h, _, d = part.shape
            more = mx.zeros((b, h, extra, d), part.dtype)
            used = buf[..., :self.offset, :] if buf.shape[0] == b and buf.shape[1] == h else more[..., :0, :]
            grown.append(mx.concatenate([used, more], axis=2))
        self.quantized = grown
        return grown

    def trimmed(self, n: int) -> None:
        if self.full is not None:
            self.full.trim(n)

    def reset(self) -> None:
        self.__init__(self.bits, self.group_size, self.threshold)  # type: ignore[misc]

    def buffers(self) -> list[mx.array | None]:
        if self.full is not None:
            return self.full.buffers()
        return list(self.quantized or [])


def make_full_cache(kv_bits: int | None):
    """The cache for an ordinary (global attention) layer."""
    return QuantizedKVCache(kv_bits) if kv_bits else KVCache()
