"""The attention step every decoder here shares once q, k, v are projected: RoPE, KV cache, SDPA."""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.rows import RowCaches


def rotate_cache_attend(q: mx.array, k: mx.array, v: mx.array, rope, cache, scale: float, mask) -> mx.array:
    """q (B, L, H, D) and k (B, L, KV, D) as projected; v (B, KV, L, D). Returns (B, L, H*D).

    With RowCaches (batched decode) each row is a sequence of its own: its own position, cache and keys."""
    if isinstance(cache, RowCaches):
        return mx.concatenate([rotate_cache_attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], rope, row, scale, mask)
                               for i, row in enumerate(cache.rows)], axis=0)
    b, length, n_heads, _ = q.shape
    offset = cache.offset if cache is not None else 0
    # One rope call for queries and keys together: half the per-op overhead on CPU.
    qk = rope(mx.concatenate([q, k], axis=2).transpose(0, 2, 1, 3), offset)
    q, k = qk[:, :n_heads], qk[:, n_heads:]
    if cache is not None:
        k, v = cache.update(k, v)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, length, -1)
