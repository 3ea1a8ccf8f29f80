"""A GGUF's hyper-parameters checked against the tensors it holds, before a model is built from them.

The metadata alone decides how big the model built from it is: block_count = 2^31 builds layers until the
machine gives out, a head count that does not divide the rows fails deep inside MLX. llama.cpp refuses
such files; so do we, naming the size that does not fit. Rows are compared (packed quantized tensors keep
their rows), so this works for float and quantized tensors alike.
"""

from __future__ import annotations

import re

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.formats.names import shown

_LAYER = re.compile(r"^blk\.(\d+)\.")


def check_sizes_fit_tensors(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """`shapes`: GGUF tensor name -> shape (rows first); `name`: the file, for the message."""
    layers = {int(m.group(1)) for key in shapes if (m := _LAYER.match(key))}
    if len(layers) != cfg.num_hidden_layers or max(layers, default=-1) != len(layers) - 1:  # exactly 0..n-1
        raise MacllmError(f"{name} declares {cfg.num_hidden_layers} layers but holds tensors for {len(layers)}; "
                          "the file is damaged, download it again")
    per_layer = {
        "attn_norm.weight": cfg.hidden_size,
        "attn_q.weight": cfg.num_attention_heads * cfg.head_dim,  # q/k rows are un-permuted by head
        "attn_k.weight": cfg.num_key_value_heads * cfg.head_dim,
        "ffn_up.weight": cfg.intermediate_size,
    }
    if cfg.model_type == "phi3":  # fused: q, k and v rows in attn_qkv; gate and up rows in ffn_up
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        per_layer["attn_qkv.weight"] = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
        per_layer["ffn_up.weight"] = 2 * cfg.intermediate_size
    experts = _expert_shapes(cfg)
    for tensor, shape in shapes.items():
        rows: int | None
        if tensor == "token_embd.weight":
            rows = cfg.vocab_size
        elif _LAYER.match(tensor):
            part = _LAYER.sub("", tensor)
            if part in experts:  # (experts, out, in): the expert count and width lead
                lead = experts[part]
                if tuple(shape[:len(lead)]) != lead:
                    raise MacllmError(f"{name}: {shown(tensor)} has shape {shape} but the metadata's expert "
                                      f"settings say {lead} first; the weights do not fit the file's sizes")
                continue
            rows = per_layer.get(part)
        else:
            continue
        if rows is not None and shape[0] != rows:
            raise MacllmError(f"{name}: {shown(tensor)} has shape {shape} but the metadata's sizes say {rows} "
                              "rows; the weights do not fit the file's head counts or sizes")


def _expert_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Leading dims of mixture-of-experts tensors: checked before the experts are built (a huge
    expert_count would allocate before any weight is compared)."""
    e = cfg.extra
    if e.get("num_experts") is None or e.get("moe_intermediate_size") is None:
        return {}
    n, width = int(e["num_experts"]), int(e["moe_intermediate_size"])
    return {"ffn_gate_inp.weight": (n,), "ffn_gate_exps.weight": (n, width), "ffn_up_exps.weight": (n, width),
            "ffn_down_exps.weight": (n, cfg.hidden_size)}
