"""The outer causal-LM wrapper every architecture shares: a body (`self.model`, mlx-lm's name), the LM head
(or tied embeddings), and the per-layer cache list. An architecture supplies its body and, if it needs
one, a logits transform (Gemma's softcap) or its own `make_cache`."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.cache.base import LayerCache
from macllm.cache.quantized import make_full_cache
from macllm.config import ModelConfig


class CausalLM(nn.Module):
    """tokens (B, L) -> logits (B, L, vocab), or only the last position's when `last_only`."""

    def __init__(self, cfg: ModelConfig, body: nn.Module):
        super().__init__()
        self.config = cfg
        self.model_type = cfg.model_type
        self.model = body  # has .embed_tokens, .layers and __call__(tokens, cache) -> hidden states
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    @property
    def layers(self) -> list:
        return self.model.layers

    def make_cache(self, kv_bits: int | None = None) -> list[LayerCache]:
        """One ordinary (optionally quantized) cache per layer."""
        return [make_full_cache(kv_bits) for _ in self.model.layers]

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint tensors -> this model's names and layout (the loader calls it before loading)."""
        return weights

    def transform_logits(self, logits: mx.array) -> mx.array:
        return logits

    def __call__(self, tokens: mx.array, cache=None, last_only: bool = False) -> mx.array:
        h = self.model(tokens, cache)
        if last_only:
            h = h[:, -1:, :]
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.as_linear(h)
        else:
            logits = self.lm_head(h)
        return self.transform_logits(logits)
