"""The pre-norm decoder every Llama-shaped family shares (Llama, Qwen3, Qwen3-MoE, Phi-3, SmolLM3): a layer is
attention over the normed input plus the residual, then an MLP over the normed sum plus the residual; the stack
is embeddings, the layers under one causal mask, a final norm. A family supplies its attention and MLP modules;
parameter names are mlx-lm's (self_attn, mlp, input_layernorm, post_attention_layernorm; embed_tokens, norm)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.config import ModelConfig
from macllm.models.fused_layer import decode_layer
from macllm.models.norm import RMSNorm, add_and_norm


class PreNormDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: nn.Module, mlp: nn.Module):
        super().__init__()
        self.self_attn = attention  # (x, mask, cache) -> x
        self.mlp = mlp
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, mask, cache) -> mx.array:
        fused = decode_layer(self, x, mask, cache)  # the whole layer as one CPU node while decoding, where it applies
        if fused is not None:
            return fused
        h, normed = add_and_norm(x, self.self_attn(self.input_layernorm(x), mask, cache),
                                 self.post_attention_layernorm)
        return h + self.mlp(normed)


class DecoderStack(nn.Module):
    """tokens (B, L) -> hidden states (B, L, hidden) after the final norm."""

    def __init__(self, cfg: ModelConfig, layers: list[PreNormDecoderLayer]):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = layers
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, tokens: mx.array, cache) -> mx.array:
        h = self.embed_tokens(tokens)
        # One query row attends to everything cached; several need the causal mask.
        mask = "causal" if h.shape[1] > 1 else None
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache is not None else None)
        return self.norm(h)
