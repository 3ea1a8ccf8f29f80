"""The attention step every decoder here shares once q, k, v are projected: RoPE, KV cache, SDPA."""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.rows import RowCaches
from macllm.cpu_kernels import fused


def rotate_cache_attend(q: mx.array, k: mx.array, v: mx.array, rope, cache, scale: float, mask) -> mx.array:
    """q (B, L, H, D) and k (B, L, KV, D) as projected; v (B, KV, L, D). Returns (B, L, H*D).

    With RowCaches (batched decode) each row is a sequence of its own: its own position, cache and keys."""
    if isinstance(cache, RowCaches):
        return mx.concatenate([rotate_cache_attend(q[i:i + 1], k[i:i + 1], v[i:i + 1], rope, row, scale, mask)
                               for i, row in enumerate(cache.rows)], axis=0)
    b, length, n_heads, _ = q.shape
    offset = cache.offset if cache is not None else 0
    tables = rope.cpu_tables(offset, length) if fused.active(q) and k.dtype == mx.float32 else None
    if tables is not None:
        return _fused_rotate_cache_attend(q, k, v, tables, cache, scale, mask)
    # One rope call for queries and keys together: half the per-op overhead on CPU.
    qk = rope(mx.concatenate([q, k], axis=2).transpose(0, 2, 1, 3), offset)
    q, k = qk[:, :n_heads], qk[:, n_heads:]
    if cache is not None:
        k, v = cache.update(k, v)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, length, -1)


def _fused_rotate_cache_attend(q: mx.array, k: mx.array, v: mx.array, tables: tuple[mx.array, mx.array], cache,
                               scale: float, mask) -> mx.array:
    """The same on the CPU with our fused ops: rope straight into the cache's (B, heads, L, D) layout, and
    for decode-sized queries one attention node that writes o_proj's (B, L, H*D) input."""
    b, length = q.shape[:2]
    q, k = fused.rotate_heads(q, *tables), fused.rotate_heads(k, *tables)
    if cache is not None:
        k, v = cache.update(k, v)
    causal = isinstance(mask, str) and mask == "causal"
    if length <= fused.MAX_ATTEND_QUERIES and (mask is None or causal) and v.dtype == mx.float32:
        return fused.attend(q, k, v, scale, causal=causal)
    if causal and v.dtype == mx.float32:
        # Prefill: BLAS matmuls around our one-pass scaled, masked softmax (MLX's runs a scalar exp).
        n_heads, n_kv = q.shape[1], k.shape[1]
        grouped = q.reshape(b, n_kv, (n_heads // n_kv) * length, q.shape[-1])  # a kv head's query heads, stacked
        probs = fused.causal_softmax(grouped @ k.swapaxes(-1, -2), scale, length)
        out = (probs @ v).reshape(b, n_heads, length, -1)
    else:
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(b, length, -1)
