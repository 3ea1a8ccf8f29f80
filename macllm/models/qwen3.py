"""Qwen3: the Llama layout with an RMSNorm on each head's queries and keys before RoPE, no q/k/v bias,
and a head_dim of its own (Qwen3 heads are often wider than hidden / heads). Parameter names follow
mlx-lm's qwen3, so mlx-community folders and mlx-lm adapters load as they are.

The decoder layer takes its feed-forward block from the caller, so Qwen3-MoE (qwen3_moe.py) reuses
everything here and swaps in its sparse block on the layers its config makes sparse.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from macllm.config import ModelConfig
from macllm.models.attention import rotate_cache_attend
from macllm.models.base import CausalLM
from macllm.models.decoder import DecoderStack, PreNormDecoderLayer
from macllm.models.llama import MLP
from macllm.models.norm import RMSNorm
from macllm.models.rope import RoPE

# Layer index -> that layer's feed-forward block (dense MLP or mixture of experts).
MakeMLP = Callable[[int], nn.Module]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RoPE):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        head_dim = cfg.head_dim
        self.scale = head_dim ** -0.5
        dim = cfg.hidden_size
        self.q_proj = nn.Linear(dim, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, dim, bias=False)
        # Per-head norms over head_dim: they keep q.k in range however large the projections grow.
        self.q_norm = RMSNorm(head_dim, eps=cfg.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, eps=cfg.rms_norm_eps)
        self.rope = rope

    def __call__(self, x: mx.array, mask, cache) -> mx.array:
        b, length, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, length, self.n_heads, -1))  # (B, L, H, D)
        k = self.k_norm(self.k_proj(x).reshape(b, length, self.n_kv_heads, -1))  # (B, L, KV, D)
        v = self.v_proj(x).reshape(b, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return self.o_proj(rotate_cache_attend(q, k, v, self.rope, cache, self.scale, mask))


class Qwen3Body(DecoderStack):
    def __init__(self, cfg: ModelConfig, make_mlp: MakeMLP, rope_periods: mx.array | None = None):
        # One instance for every layer: the CPU cos/sin tables are built once a step.
        rope = RoPE(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, periods=rope_periods)
        super().__init__(cfg, [PreNormDecoderLayer(cfg, Attention(cfg, rope), make_mlp(i))
                               for i in range(cfg.num_hidden_layers)])


class Model(CausalLM):
    """Qwen3 (dense)."""

    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        super().__init__(cfg, Qwen3Body(cfg, lambda _: MLP(cfg.hidden_size, cfg.intermediate_size), rope_periods))
