"""A KV cache for sliding-window attention layers: keeps only the last `window` positions (plus some
slack), so its memory stays bounded however long the conversation gets.

Positions stay absolute: `offset` counts every token ever seen, `start` is the first position still
stored. `update` returns just the keys the new queries may see, so a single decoding query needs no mask.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.base import BufferedCache, grown


class SlidingWindowCache(BufferedCache):
    slack = 256  # extra positions kept so regenerate/edit can trim a little without recomputing

    def __init__(self, window: int):
        self.window = window
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.start = 0
        self.offset = 0

    def buffers(self) -> list[mx.array | None]:
        return [self.keys, self.values]

    @property
    def stored(self) -> int:
        return self.offset - self.start

    def update(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append (B, heads, L, D); return the positions visible to these L queries (window - 1 back)."""
        new = keys.shape[2]
        self._drop_old()
        if self.keys is None or self.values is None or self.stored + new > self.keys.shape[2]:
            self.keys = grown(self.keys, keys, self.stored, new, self.step)
            self.values = grown(self.values, values, self.stored, new, self.step)
        at = self.stored
        self.keys[..., at:at + new, :] = keys
        self.values[..., at:at + new, :] = values
        first_visible = max(self.start, self.offset - (self.window - 1))
        self.offset += new
        lo, hi = first_visible - self.start, self.stored
        return self.keys[..., lo:hi, :], self.values[..., lo:hi, :]

    def visible_before(self) -> int:
        """How many earlier positions the next query block sees (what `update` will return before it)."""
        return self.offset - max(self.start, self.offset - (self.window - 1))

    def _drop_old(self) -> None:
        keep = self.window - 1 + self.slack
        if self.keys is None or self.values is None or self.stored <= keep + self.step:
            return
        cut = self.stored - keep
        self.keys = self.keys[..., cut:, :]
        self.values = self.values[..., cut:, :]
        self.start += cut

    def can_trim(self, n: int) -> bool:
        """Trimming is possible while the window before the new end is still stored."""
        end = self.offset - min(n, self.offset)
        return self.start == 0 or end - (self.window - 1) >= self.start

    def reset(self) -> None:
        self.keys = self.values = None
        self.start = self.offset = 0


def window_mask(queries: int, before: int, window: int):
    """Mask for `queries` new positions over `before` earlier visible ones plus themselves:
    key j is visible to query i when it is not in the future and less than `window` positions back."""
    if queries == 1 and before < window:
        return None
    if before + queries <= window:
        return "causal"
    q_pos = mx.arange(queries)[:, None] + before
    k_pos = mx.arange(before + queries)[None, :]
    return (k_pos <= q_pos) & (q_pos - k_pos < window)
