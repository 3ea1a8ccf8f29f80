"""The ordinary KV cache: one buffer pair per layer that grows in steps, so decode appends without copying."""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.base import BufferedCache, grown


class KVCache(BufferedCache):
    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def buffers(self) -> list[mx.array | None]:
        return [self.keys, self.values]

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append (B, heads, L, D) keys/values; return everything cached so far."""
        new = keys.shape[2]
        if self.keys is None or self.values is None or self.offset + new > self.keys.shape[2]:
            self.keys = grown(self.keys, keys, self.offset, new, self.step)
            self.values = grown(self.values, values, self.offset, new, self.step)
        self.keys[..., self.offset:self.offset + new, :] = keys
        self.values[..., self.offset:self.offset + new, :] = values
        self.offset += new
        return self.keys[..., :self.offset, :], self.values[..., :self.offset, :]

    def reset(self) -> None:
        self.keys = self.values = None
        self.offset = 0
