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

    def room_for(self, new: int, batch: int, heads: int, key_dims: int, value_dims: int) -> tuple[mx.array, mx.array]:
        """The float32 buffers, grown first if `new` more positions would not fit: for an op that writes the
        positions itself (the CPU decoder-layer op) and hands back the buffers through `wrote`."""
        if self.keys is None or self.values is None or self.offset + new > self.keys.shape[2]:
            self.keys = grown(self.keys, mx.zeros((batch, heads, 0, key_dims)), self.offset, new, self.step)
            self.values = grown(self.values, mx.zeros((batch, heads, 0, value_dims)), self.offset, new, self.step)
        return self.keys, self.values

    def wrote(self, keys: mx.array, values: mx.array, new: int) -> None:
        """The buffers after an op wrote `new` positions at `offset` (they replace the old ones, which it may
        have reused in place)."""
        self.keys, self.values = keys, values
        self.offset += new

    def reset(self) -> None:
        self.keys = self.values = None
        self.offset = 0
