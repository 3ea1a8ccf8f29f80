"""Adapters with random weights, shaped for a model config: for tests, benchmarks and as a training start."""

from __future__ import annotations

import datetime as dt

import mlx.core as mx

from macllm.config import ModelConfig
from macllm.lora.adapter import Adapter
from macllm.lora.store import fingerprint

ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
ALL_KEYS = ATTENTION + MLP


def module_dims(cfg: ModelConfig, key: str) -> tuple[int, int]:
    """(in, out) of a projection inside a decoder layer."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"self_attn.q_proj": (d, q), "self_attn.k_proj": (d, kv), "self_attn.v_proj": (d, kv),
            "self_attn.o_proj": (q, d), "mlp.gate_proj": (d, f), "mlp.up_proj": (d, f),
            "mlp.down_proj": (f, d)}[key]


def random_adapter(cfg: ModelConfig, name: str, rank: int = 8, keys=ALL_KEYS, layers=None, seed: int = 0,
                   scale: float = 1.0, b_std: float = 0.02, base_model: str | None = None) -> Adapter:
    """A uniform like mlx-lm's init; B random too (b_std > 0) so the adapter changes the output,
    or zero (b_std = 0) as training starts."""
    key = mx.random.key(seed)
    layers = range(cfg.num_hidden_layers) if layers is None else layers
    weights = {}
    for i in layers:
        for k in keys:
            in_dims, out_dims = module_dims(cfg, k)
            key, ka, kb = mx.random.split(key, 3)
            bound = in_dims ** -0.5
            a = mx.random.uniform(-bound, bound, (in_dims, rank), key=ka)
            b = (mx.random.normal((rank, out_dims), key=kb) * b_std) if b_std else mx.zeros((rank, out_dims))
            weights[f"model.layers.{i}.{k}"] = (a, b)
    mx.eval(weights)
    return Adapter(name=name, rank=rank, scale=scale, weights=weights, keys=list(keys),
                   num_layers=cfg.num_hidden_layers - min(layers) if len(layers) else 0,
                   base_model=base_model, base_fingerprint=fingerprint(cfg),
                   created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
