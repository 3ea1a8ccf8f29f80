"""What every per-layer KV cache is: the `LayerCache` protocol, and `BufferedCache`, the bookkeeping the
full, sliding-window and quantized caches share (state, nbytes, trim), written once.

A model's cache is a list with one LayerCache per layer; `macllm.cache.ops` works on such lists.
"""

from __future__ import annotations

from typing import Protocol

import mlx.core as mx


class LayerCache(Protocol):
    offset: int  # positions seen so far (absolute: a sliding window counts dropped ones too)

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]: ...

    def can_trim(self, n: int) -> bool: ...

    def trim(self, n: int) -> int: ...

    def reset(self) -> None: ...

    @property
    def state(self) -> list[mx.array]: ...

    @property
    def nbytes(self) -> int: ...


class BufferedCache:
    """Buffers of shape (batch, heads, positions, width) whose first `stored` positions hold data."""

    step = 256  # buffers grow by this many positions, so decode appends without copying
    offset: int

    def buffers(self) -> list[mx.array | None]:
        raise NotImplementedError

    @property
    def stored(self) -> int:
        """Positions held in the buffers (fewer than `offset` once a sliding window dropped some)."""
        return self.offset

    @property
    def state(self) -> list[mx.array]:
        return [a for a in self.buffers() if a is not None]

    @property
    def nbytes(self) -> int:
        return sum(a[..., :self.stored, :].nbytes for a in self.state)

    def can_trim(self, n: int) -> bool:
        return True

    def trim(self, n: int) -> int:
        """Forget the last n positions (for regenerate / edited prompts)."""
        n = min(self.offset, n)
        if not self.can_trim(n):
            raise ValueError(f"{type(self).__name__} cannot trim past what it still stores")
        self.offset -= n
        self.trimmed(n)
        return n

    def trimmed(self, n: int) -> None:
        """Hook for caches that keep a second counter in step with `offset`."""


def grown(buffer: mx.array | None, like: mx.array, used: int, new: int, step: int) -> mx.array:
    """`buffer`'s first `used` positions followed by room for at least `new` more, shaped like `like`."""
    b, h, _, d = like.shape
    extra = ((new + step - 1) // step) * step
    more = mx.zeros((b, h, extra, d), like.dtype)
    if buffer is None:
        return more
    return mx.concatenate([buffer[..., :used, :], more], axis=2)
