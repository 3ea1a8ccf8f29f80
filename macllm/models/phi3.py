"""Phi-3 and Phi-4 (`model_type: phi3`): the Llama layout with q, k, v fused into one `qkv_proj` and the
SwiGLU gate and up into one `gate_up_proj` (gate first), head_dim = hidden / heads, RoPE over the first
`partial_rotary_factor` of each head (Phi-4-mini: 0.75) with "linear" or LongRoPE ("su" / "longrope")
scaling. Parameter names follow mlx-lm's phi3, so mlx-community folders and mlx-lm adapters (on
`qkv_proj`, `gate_up_proj`) load as they are.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.models.attention import rotate_cache_attend
from macllm.models.base import CausalLM
from macllm.models.decoder import DecoderStack, PreNormDecoderLayer
from macllm.models.rope import RoPE, su_scaled

_LONGROPE = ("su", "longrope")
# `macllm train` targets (Llama names) -> the fused layer that holds them.
_FUSED_TARGETS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                  "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def phi3_rope(cfg: ModelConfig, head_dim: int) -> RoPE:
    """The one RoPE every layer shares, with the config's scaling (mlx-lm's reading of it)."""
    e = cfg.extra
    dims = int(head_dim * float(e.get("partial_rotary_factor", 1.0)))
    if not 0 < dims <= head_dim or dims % 2:
        raise MacllmError(f"this phi3 model's partial_rotary_factor rotates {dims} of {head_dim} features per head; "
                          "it must be an even number of them, at least 2")
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("type", scaling.get("rope_type"))
    traditional = bool(e.get("rope_traditional", False))
    if kind in _LONGROPE:
        original = e.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings") \
            or 4096
        try:
            periods, factor = su_scaled(dims, cfg.rope_theta, scaling, cfg.max_position_embeddings, int(original))
        except (KeyError, TypeError, ValueError) as err:
            raise MacllmError(f"the {kind} rope scaling does not fit this phi3 model ({err})") from None
        return RoPE(dims, cfg.rope_theta, traditional=traditional, periods=periods, attention_factor=factor)
    if kind not in (None, "default", "linear"):
        raise MacllmError(f"phi3 rope_scaling type {kind!r} is not supported (linear, su, longrope)")
    return RoPE(dims, cfg.rope_theta, scaling if kind == "linear" else None, traditional=traditional)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rope: RoPE):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // self.n_heads  # as mlx-lm: Phi-3 configs carry no head_dim
        self.scale = self.head_dim ** -0.5
        q_rows, kv_rows = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_rows + 2 * kv_rows, bias=False)
        self.o_proj = nn.Linear(q_rows, cfg.hidden_size, bias=False)
        self._splits = [q_rows, q_rows + kv_rows]
        self.rope = rope

    def __call__(self, x: mx.array, mask, cache) -> mx.array:
        b, length, _ = x.shape
        q, k, v = mx.split(self.qkv_proj(x), self._splits, axis=-1)
        q = q.reshape(b, length, self.n_heads, -1)
        k = k.reshape(b, length, self.n_kv_heads, -1)
        v = v.reshape(b, length, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return self.o_proj(rotate_cache_attend(q, k, v, self.rope, cache, self.scale, mask))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(nn.silu(gate) * up)


class Phi3Body(DecoderStack):
    def __init__(self, cfg: ModelConfig):
        rope = phi3_rope(cfg, cfg.hidden_size // cfg.num_attention_heads)
        layers = [PreNormDecoderLayer(cfg, Attention(cfg, rope), MLP(cfg.hidden_size, cfg.intermediate_size))
                  for _ in range(cfg.num_hidden_layers)]
        super().__init__(cfg, layers)


def fuse_projections(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Separate q/k/v (or gate/up) tensors of a layer -> the fused ones, rows stacked in mlx-lm's order.
    Quantized triples stack the same way (groups run along each row)."""
    out = dict(weights)
    for fused, parts in (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                         ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj"))):
        for name in [n for n in weights if f".{parts[0]}." in n]:
            prefix, kind = name.split(f".{parts[0]}.")
            names = [f"{prefix}.{p}.{kind}" for p in parts]
            if all(n in out for n in names):
                out[f"{prefix}.{fused}.{kind}"] = mx.concatenate([out.pop(n) for n in names], axis=0)
    return out


class Model(CausalLM):
    """Phi-3 / Phi-4 (dense)."""

    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        super().__init__(cfg, Phi3Body(cfg))

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return fuse_projections(weights)

    def lora_paths(self, last: int | None, keys: list[str]) -> list[str]:
        """The layers `macllm train` wraps for Llama-named targets: q/k/v live in qkv_proj, gate/up in
        gate_up_proj."""
        layers = range(self.num_layers - (self.num_layers if last is None else last), self.num_layers)
        parts = []
        for key in keys:
            section, name = key.rsplit(".", 1)
            part = f"{section}.{_FUSED_TARGETS.get(name, name)}"
            if part not in parts:
                parts.append(part)
        return [f"model.layers.{i}.{part}" for i in layers for part in parts]
