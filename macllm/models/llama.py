"""The Llama family (llama, mistral, qwen2): pre-norm decoder with GQA attention, RoPE and SwiGLU."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.config import ModelConfig
from macllm.cpu_kernels import fused
from macllm.models.attention import rotate_cache_attend
from macllm.models.base import CausalLM
from macllm.models.decoder import DecoderStack, PreNormDecoderLayer
from macllm.models.rope import RoPE


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RoPE):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim ** -0.5
        dim, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)
        self.rope = rope

    def __call__(self, x: mx.array, mask, cache) -> mx.array:
        b, length, _ = x.shape
        q = self.q_proj(x).reshape(b, length, self.n_heads, -1)
        k = self.k_proj(x).reshape(b, length, self.n_kv_heads, -1)
        v = self.v_proj(x).reshape(b, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return self.o_proj(rotate_cache_attend(q, k, v, self.rope, cache, self.scale, mask))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(fused.silu_mul(gate, up) if fused.active(gate) else nn.silu(gate) * up)


class LlamaBody(DecoderStack):
    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        rope = RoPE(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, periods=rope_periods)
        layers = [PreNormDecoderLayer(cfg, Attention(cfg, rope), MLP(cfg.hidden_size, cfg.intermediate_size))
                  for _ in range(cfg.num_hidden_layers)]
        super().__init__(cfg, layers)


class Model(CausalLM):
    """Llama, Mistral and Qwen2 (they differ here only in q/k/v bias)."""

    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        super().__init__(cfg, LlamaBody(cfg, rope_periods))
