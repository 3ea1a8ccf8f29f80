"""A multimodal checkpoint's config.json -> the config of the text model inside it (what macllm runs).

Gemma 3 4B/12B/27B are `model_type: gemma3` with the text model's settings under `text_config` and a
vision tower beside it. Their text_config leaves out whatever equals transformers' Gemma3TextConfig
defaults (the 4B names neither heads nor head_dim), so the defaults are filled in here the way mlx-lm's
gemma3 wrapper does. Gemma's transformers 5 configs nest rope settings per layer type; they are
flattened to the keys the text model reads.
"""

from __future__ import annotations

from typing import Any

from macllm.errors import MacllmError

# transformers' Gemma3TextConfig defaults, as mlx-lm's gemma3 / gemma3_text apply them. Where the two
# differ, transformers (which wrote the checkpoints) wins: max_position_embeddings and sliding_window.
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
}
# Sizes no default can stand in for: a config without them describes no real Gemma 3.
_GEMMA3_REQUIRED = ("hidden_size", "num_hidden_layers", "intermediate_size")
# Top-level keys of the wrapper that describe the whole checkpoint, not the vision side.
_WRAPPER_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype", "quantization",
                 "quantization_config", "tie_word_embeddings")
# Weight-name prefixes of the text model inside the wrapper (mlx-lm / older transformers, newer transformers).
TEXT_PREFIXES = ("language_model.", "model.language_model.")


def text_model_config(raw: dict) -> dict:
    """config.json as read -> the config of the model macllm builds; text-only configs pass through."""
    if raw.get("model_type") == "gemma3" and "text_config" in raw:
        return _gemma3_text(raw)
    if raw.get("model_type") in ("gemma3", "gemma3_text"):
        return _flatten_gemma_rope(dict(raw))
    return raw


def _gemma3_text(raw: dict) -> dict:
    text = raw["text_config"]
    if not isinstance(text, dict):
        raise MacllmError("config.json's text_config is not a JSON object; download the model again")
    missing = [k for k in _GEMMA3_REQUIRED if text.get(k) is None]
    if missing:
        raise MacllmError(f"config.json's text_config lacks {', '.join(missing)}; it does not describe a "
                          "complete Gemma 3 model")
    out: dict[str, Any] = dict(GEMMA3_TEXT_DEFAULTS)
    out.update({k: raw[k] for k in _WRAPPER_KEYS if raw.get(k) is not None})
    out.update({k: v for k, v in text.items() if v is not None})
    # mlx-lm takes the vocabulary size from the wrapper (the embedding has one row per token incl. image ones).
    if raw.get("vocab_size") is not None:
        out["vocab_size"] = raw["vocab_size"]
    out["model_type"] = "gemma3_text"  # the model built (and what `fuse` writes) is the text model
    out["architectures"] = ["Gemma3ForCausalLM"]
    for key in ("quantization", "quantization_config"):
        if isinstance(out.get(key), dict):
            out[key] = _text_quantization(out[key])
    return _flatten_gemma_rope(out)


def _text_quantization(quant: dict) -> dict:
    """Per-layer overrides are keyed by module path: keep the text model's, under our names."""
    out = {}
    for key, value in quant.items():
        if not isinstance(value, dict | bool):
            out[key] = value
            continue
        for prefix in TEXT_PREFIXES:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                out[rest if rest.startswith(("model.", "lm_head")) else f"model.{rest}"] = value
                break
    return out


def _flatten_gemma_rope(cfg: dict) -> dict:
    """transformers 5: rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}."""
    rope = cfg.get("rope_parameters")
    if not isinstance(rope, dict) or not isinstance(rope.get("full_attention"), dict):
        return cfg
    full, local = rope["full_attention"], rope.get("sliding_attention") or {}
    if full.get("rope_theta") is not None:
        cfg["rope_theta"] = full["rope_theta"]
    if full.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    if local.get("rope_theta") is not None:
        cfg["rope_local_base_freq"] = local["rope_theta"]
    del cfg["rope_parameters"]
    return cfg
