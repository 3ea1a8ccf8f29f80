"""A Llama-shaped decoder layer as one CPU node while decoding (csrc/fused_layer.cpp, docs/kernels.md):
Llama, Mistral, Qwen2 and Qwen3 (its per-head q/k norms) layers with a dense SwiGLU MLP.

The per-op path schedules ~23 MLX nodes per layer (norms, seven projections, rope, cache writes, attention,
adds): on the CPU their scheduling and the Python that builds them cost about as much as reading the
weights. Where everything the op needs holds, `decode_layer` runs the layer as one node with the same
arithmetic (bit-identical output); anywhere else it returns None and the layer's modules run as before.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.cache.full import KVCache
from macllm.cpu_kernels import extension, fused

PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def _operands(layer) -> list[tuple] | None:
    found = []
    for block, name in PROJECTIONS:  # absent in other layouts (Phi-3's fused qkv, a mixture of experts)
        # Modules are dicts: indexing them skips nn.Module's Python-level __getattr__ (this runs per layer
        # and step, and was a third of building a decode step's graph).
        get = getattr(layer[block].get(name), "kernel_operands", None)
        operands = get() if get is not None else None
        if operands is None:
            return None
        bias = operands[3]
        if bias is not None and bias.dtype != mx.float32:
            return None
        found.append(operands)
    return found


def decode_layer(layer, x: mx.array, mask, cache) -> mx.array | None:
    """layer(x, mask, cache) as one node, or None where the op does not apply: not the CPU kernel path,
    more than a few rows (prefill keeps BLAS), another cache (quantized, sliding, per-row), training, a
    projection the kernel does not compute, or a rope without CPU tables."""
    if (type(cache) is not KVCache or x.ndim != 3 or x.shape[1] > fused.MAX_ATTEND_QUERIES or layer.training
            or mask not in (None, "causal") or not fused.active(x)):
        return None
    if cache.keys is not None and cache.keys.dtype != mx.float32:
        return None
    attn = layer["self_attn"]
    operands = _operands(layer)
    tables = attn.rope.cpu_tables(cache.offset, x.shape[1]) if operands is not None else None
    if tables is None:
        return None
    assert extension is not None and operands is not None
    norm_in, norm_post = layer["input_layernorm"], layer["post_attention_layernorm"]
    q_norm, k_norm = attn.get("q_norm"), attn.get("k_norm")  # Qwen3's per-head norms
    batch, length = x.shape[:2]
    head_dim = operands[1][0].shape[0] // attn.n_kv_heads  # k_proj's rows
    keys, values = cache.room_for(length, batch, attn.n_kv_heads, head_dim, head_dim)
    out, keys, values = extension.decoder_layer(
        x, norm_in["weight"], norm_post["weight"], *tables, keys, values, operands, attn.n_heads, attn.n_kv_heads,
        cache.offset, norm_in.eps, norm_post.eps, attn.scale, mask == "causal",
        q_norm["weight"] if q_norm is not None else None, k_norm["weight"] if k_norm is not None else None,
        q_norm.eps if q_norm is not None else 0.0)
    cache.wrote(keys, values, length)
    return out
