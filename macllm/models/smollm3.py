"""SmolLM3: the Llama layout with RoPE left out on some layers ("NoPE": every `no_rope_layer_interval`-th
layer by default, or as the config's `no_rope_layers` lists, 1 = rotate). Parameter names are Llama's,
as in mlx-lm's smollm3, so mlx-community folders and mlx-lm adapters load as they are.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.models.base import CausalLM
from macllm.models.llama import LlamaBody

DEFAULT_INTERVAL = 4  # transformers' and mlx-lm's default; llama.cpp hard-codes it for smollm3 GGUFs


class NoRoPE(nn.Module):
    """Stands in for the shared RoPE on a layer that attends by content alone."""

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        return x

    def cpu_tables(self, offset: int, length: int) -> None:
        """No rotation, so no tables: such a layer attends through MLX's ops (see models/attention.py)."""
        return None


def rope_layers(cfg: ModelConfig) -> list[bool]:
    """Per layer: whether it applies RoPE."""
    n = cfg.num_hidden_layers
    listed = cfg.extra.get("no_rope_layers")
    if listed is not None:
        if not isinstance(listed, list) or len(listed) != n:
            raise MacllmError(f"config.json's no_rope_layers must list one 0/1 per layer ({n} layers)")
        return [bool(flag) for flag in listed]
    interval = cfg.extra.get("no_rope_layer_interval") or DEFAULT_INTERVAL
    if type(interval) is not int or interval < 1:
        raise MacllmError(f"config.json's no_rope_layer_interval must be a positive integer, got {interval!r}")
    return [(i + 1) % interval != 0 for i in range(n)]


class Model(CausalLM):
    """SmolLM3 (Llama with NoPE layers)."""

    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        body = LlamaBody(cfg, rope_periods)
        for layer, rotates in zip(body.layers, rope_layers(cfg), strict=True):
            if not rotates:
                layer.self_attn.rope = NoRoPE()  # any (x, offset) -> x callable serves llama's Attention
        super().__init__(cfg, body)
