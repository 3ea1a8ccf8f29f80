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
        self.full: KVCache | None = KVCache()  # used until the threshold
        self.quantized: list | None = None  # [k_packed, k_scales, k_biases, v_packed, v_scales, v_biases]
        self.offset = 0
        self.dtype = None

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        new = keys.shape[2]
        self.dtype = keys.dtype
        if self.quantized is None and self.offset + new <= self.threshold or keys.shape[-1] % self.group_size:
            k, v = self.full.update(keys, values)
            self.offset = self.full.offset
            return k, v
        if self.quantized is None:
            self._switch_to_quantized()
        parts = self._quantize(keys) + self._quantize(values)
        if self.offset + new > self.quantized[0].shape[2]:
            self._grow(parts, new)
        for buf, part in zip(self.quantized, parts, strict=True):
            buf[..., self.offset:self.offset + new, :] = part
        self.offset += new
        return self._read(0), self._read(3)

    def _quantize(self, x: mx.array) -> list[mx.array]:
        return list(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def _read(self, first: int) -> mx.array:
        packed, scales, biases = (a[..., :self.offset, :] for a in self.quantized[first:first + 3])
        return mx.dequantize(packed, scales, biases, group_size=self.group_size, bits=self.bits).astype(self.dtype)

    def _switch_to_quantized(self) -> None:
        n = self.full.offset
        self.quantized = [p[..., :0, :] for p in self._quantize(mx.zeros((1, 1, 1, self.group_size)))] * 2
        if n:
            keys, values = self.full.keys[..., :n, :], self.full.values[..., :n, :]
            parts = self._quantize(keys) + self._quantize(values)
            self.quantized = [p for p in parts]
            self._grow(parts, 0)
        self.full = None

    def _grow(self, like: list[mx.array], new: int) -> None:
        extra = ((new + self.step - 1) // self.step + 1) * self.step
        grown = []
        for buf, part in zip(self.quantized, like, strict=True):
            b, h, _, d = part.shape
            more = mx.zeros((b, h, extra, d), part.dtype)
            used = buf[..., :self.offset, :] if buf.shape[0] == b and buf.shape[1] == h else more[..., :0, :]
            grown.append(mx.concatenate([used, more], axis=2))
        self.quantized = grown

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
