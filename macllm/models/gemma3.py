"""Gemma 3 (text): sliding-window and global attention layers, QK RMSNorm, norms around attention and
FFN, GELU-tanh gated FFN, embeddings scaled by sqrt(hidden). Parameter names follow mlx-lm's
gemma3_text, and norm weights are stored Hugging Face style (the norm multiplies by 1 + weight).

Full (multimodal) Gemma 3 checkpoints run as their text model: `sanitize` maps the `language_model.`
weights of the mlx-lm / older transformers layout and the `model.language_model.` ones of newer
transformers to ours, and leaves the vision tower and projector unloaded.
"""

from __future__ import annotations

import math
import sys

import mlx.core as mx
import mlx.nn as nn

from macllm.cache.base import LayerCache
from macllm.cache.quantized import make_full_cache
from macllm.cache.sliding import SlidingWindowCache, window_mask
from macllm.config import ModelConfig
from macllm.cpu_kernels import fused
from macllm.models.attention import rotate_cache_attend
from macllm.models.base import CausalLM
from macllm.models.rope import RoPE

# (checkpoint prefix, ours): the text model inside a multimodal checkpoint, in both layouts.
_TEXT_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                  ("model.language_model.", "model."))
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
VISION_NOTICE = "macllm: this Gemma 3 checkpoint has a vision tower; image input is not supported yet; text chat works"


def text_weights(weights: dict[str, mx.array]) -> tuple[dict[str, mx.array], bool]:
    """Multimodal checkpoint names -> the text model's (ours); also whether vision weights were left out."""
    out: dict[str, mx.array] = {}
    vision = False
    for name, value in weights.items():
        if name.startswith(_VISION_PREFIXES):
            vision = True
            continue
        for theirs, ours in _TEXT_PREFIXES:
            if name.startswith(theirs):
                name = ours + name[len(theirs):]
                break
        out[name] = value
    return out, vision


def gemma_settings(cfg: ModelConfig) -> dict:
    """Gemma-only hyper-parameters (kept in cfg.extra), with Gemma 3's published defaults."""
    e = cfg.extra
    return {
        "sliding_window": int(e.get("sliding_window") or 512),
        "sliding_window_pattern": int(e.get("sliding_window_pattern") or 6),
        "rope_local_base_freq": float(e.get("rope_local_base_freq") or 10000.0),
        "query_pre_attn_scalar": float(e.get("query_pre_attn_scalar") or cfg.head_dim),
        "final_logit_softcapping": e.get("final_logit_softcapping"),
        "layer_types": e.get("layer_types"),
    }


def is_sliding_layer(index: int, settings: dict) -> bool:
    types = settings["layer_types"]
    if types:
        return types[index] == "sliding_attention"
    return (index + 1) % settings["sliding_window_pattern"] != 0


class RMSNorm(nn.Module):
    """Gemma's RMSNorm scales by (1 + weight), so a zero weight is the identity."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        weight = 1.0 + self.weight
        if fused.active(x):
            return fused.rms_norm(x, weight, self.eps)
        return mx.fast.rms_norm(x, weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, settings: dict, rope: RoPE):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = settings["query_pre_attn_scalar"] ** -0.5
        dim = cfg.hidden_size
        self.q_proj = nn.Linear(dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.rope = rope

    def __call__(self, x: mx.array, mask, cache) -> mx.array:
        b, length, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, length, self.n_heads, -1))
        k = self.k_norm(self.k_proj(x).reshape(b, length, self.n_kv_heads, -1))
        v = self.v_proj(x).reshape(b, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return self.o_proj(rotate_cache_attend(q, k, v, self.rope, cache, self.scale, mask))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, settings: dict, rope: RoPE, sliding: bool):
        super().__init__()
        self.sliding = sliding
        self.self_attn = Attention(cfg, settings, rope)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps)

    def __call__(self, x: mx.array, mask, cache) -> mx.array:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask, cache))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Body(nn.Module):
    def __init__(self, cfg: ModelConfig, settings: dict):
        super().__init__()
        self.window = settings["sliding_window"]
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        # Local layers rotate with their own base and never scale; global layers take the config's scaling.
        local_rope = RoPE(cfg.head_dim, settings["rope_local_base_freq"])
        global_rope = RoPE(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            sliding = is_sliding_layer(i, settings)
            self.layers.append(DecoderLayer(cfg, settings, local_rope if sliding else global_rope, sliding))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # llama.cpp scales by sqrt(hidden) in float32 (mlx-lm rounds it to bfloat16 first).
        self.embed_scale = math.sqrt(cfg.hidden_size)

    def __call__(self, tokens: mx.array, cache) -> mx.array:
        h = self.embed_tokens(tokens) * self.embed_scale
        length = h.shape[1]
        global_mask = "causal" if length > 1 else None
        sliding_mask = window_mask(length, self._visible_before(cache), self.window)
        for i, layer in enumerate(self.layers):
            h = layer(h, sliding_mask if layer.sliding else global_mask, cache[i] if cache is not None else None)
        return self.norm(h)

    def encode(self, tokens: mx.array, valid: mx.array) -> mx.array:
        """Bidirectional pass for sentence embeddings (EmbeddingGemma): tokens (B, L), valid (B, L) bool (False
        at right padding) -> hidden states (B, L, D). Global layers see every real token; sliding layers those
        less than window // 2 + 1 positions away on either side (transformers' bidirectional window)."""
        h = self.embed_tokens(tokens) * self.embed_scale
        keys = valid[:, None, None, :]  # (B, 1, 1, L): padding is never attended to
        positions = mx.arange(tokens.shape[1])
        near = mx.abs(positions[:, None] - positions[None, :]) < self.window // 2 + 1  # (L, L)
        sliding = keys & near
        for layer in self.layers:
            h = layer(h, sliding if layer.sliding else keys, None)
        return self.norm(h)

    def _visible_before(self, cache) -> int:
        if cache is None:
            return 0
        for layer, c in zip(self.layers, cache, strict=True):
            if layer.sliding:
                return c.visible_before() if isinstance(c, SlidingWindowCache) else c.offset
        return 0


class Model(CausalLM):
    """Gemma 3 text: sliding-window and global layers, optional final logit softcap."""

    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        settings = gemma_settings(cfg)
        super().__init__(cfg, Gemma3Body(cfg, settings))
        self.settings = settings

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        weights, vision = text_weights(super().sanitize(weights))
        if vision:
            print(VISION_NOTICE, file=sys.stderr)  # once per load: the tower's tensors are simply not read
        if self.config.tie_word_embeddings:  # a wrapper's lm_head (if saved) is the embedding again
            weights = {k: v for k, v in weights.items() if not k.startswith("lm_head.")}
        return weights

    def make_cache(self, kv_bits: int | None = None) -> list[LayerCache]:
        """Sliding layers get a bounded cache; global layers the ordinary one (quantized if asked)."""
        return [SlidingWindowCache(self.model.window) if layer.sliding else make_full_cache(kv_bits)
                for layer in self.model.layers]

    def transform_logits(self, logits: mx.array) -> mx.array:
        cap = self.settings["final_logit_softcapping"]
        return mx.tanh(logits / cap) * cap if cap else logits
