"""config.json of an architecture that runs on mlx-lm -> our ModelConfig (no MLX, no mlx-lm import).

mlx-lm's ModelArgs reads the raw dict, kept whole in `extra`; our fields hold the sizes under whatever
names the family uses, for fingerprints, context checks and training."""

from __future__ import annotations

import copy

from macllm.config import ModelConfig
from macllm.errors import MacllmError


def _first(raw: dict, *keys: str):
    for key in keys:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def family_config(raw: dict) -> ModelConfig:
    """Sizes read where this family keeps them; a missing hidden size is refused, other sizes default."""
    hidden = _first(raw, "hidden_size", "d_model", "n_embd", "dim", "model_dim")
    if hidden is None:
        raise MacllmError(f"config.json of this {raw.get('model_type')} model gives no hidden size")
    heads = _first(raw, "num_attention_heads", "n_head", "n_heads", "num_heads") or 1
    quant = raw.get("quantization")
    if not isinstance(quant, dict):
        q = raw.get("quantization_config")
        quant = q if isinstance(q, dict) and "bits" in q and "group_size" in q else None
    return ModelConfig(
        model_type=str(raw["model_type"]),
        hidden_size=hidden,
        num_hidden_layers=_first(raw, "num_hidden_layers", "n_layer", "n_layers", "num_layers") or 1,
        intermediate_size=_first(raw, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size") or 4 * hidden,
        num_attention_heads=heads,
        vocab_size=_first(raw, "vocab_size", "padded_vocab_size", "n_vocab") or 1,
        num_key_value_heads=_first(raw, "num_key_value_heads", "n_kv_heads", "num_kv_heads") or heads,
        head_dim=_first(raw, "head_dim") or 0,
        max_position_embeddings=_first(raw, "max_position_embeddings", "n_positions", "max_seq_len",
                                       "seq_length", "n_ctx", "max_sequence_length") or 4096,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        quantization=quant,
        extra=copy.deepcopy(raw),  # mlx-lm's ModelArgs.from_dict reads the whole raw dict
    )
