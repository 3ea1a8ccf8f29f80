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
        b, h, new, _ = keys.shape
        # The buffers are self.keys / self.values: item assignment swaps in the updated arrays (written in place
        # when MLX can donate the old ones).
        buffer_k, buffer_v = self.room_for(new, b, h, keys.shape[-1], values.shape[-1], keys.dtype)
        buffer_k[..., self.offset:self.offset + new, :] = keys
        buffer_v[..., self.offset:self.offset + new, :] = values
        self.offset += new
        return buffer_k[..., :self.offset, :], buffer_v[..., :self.offset, :]

    def room_for(self, new: int, batch: int, heads: int, key_dims: int, value_dims: int,
                 dtype: mx.Dtype = mx.float32) -> tuple[mx.array, mx.array]:
        """The buffers, grown first if `new` more positions would not fit: for `update`, and for an op that
        writes the positions itself (the CPU decoder-layer op) and hands back the buffers through `wrote`."""
        if self.keys is None or self.values is None or self.offset + new > self.keys.shape[2]:
            self.keys = grown(self.keys, mx.zeros((batch, heads, 0, key_dims), dtype), self.offset, new, self.step)
            self.values = grown(self.values, mx.zeros((batch, heads, 0, value_dims), dtype), self.offset, new,
                                self.step)
        return self.keys, self.values

    def wrote(self, keys: mx.array, values: mx.array, new: int) -> None:
        """The buffers after an op wrote `new` positions at `offset` (they replace the old ones, which it may
        have reused in place)."""
        self.keys, self.values = keys, values
        self.offset += new

    def reset(self) -> None:
        self.keys = self.values = None
        self.offset = 0
