"""Hugging Face / mlx-community model folders: config.json + one or sharded *.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.formats.arrays import load_arrays
from macllm.formats.shards import weight_files
from macllm.formats.text_config import text_model_config
from macllm.models import model_class
from macllm.models.family_config import family_config
from macllm.models.implementation import MLX_LM_LABEL, implementation

# The sizes every architecture reads; a config.json without them cannot describe a model.
_REQUIRED_SIZES = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
_OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "max_position_embeddings")

# Tensors some checkpoints carry that no architecture here needs (recomputed at run time).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise MacllmError(f"{folder} has no config.json; pass a Hugging Face model folder or a .gguf file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MacllmError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); "
                          "download the model again") from None
    except UnicodeDecodeError:
        raise MacllmError(f"{path} is not UTF-8 text; download the model again") from None
    if not isinstance(raw, dict):
        raise MacllmError(f"{path} is not a model config (expected a JSON object)")
    return raw


def check_sizes(raw: dict, path: Path) -> None:
    """Missing or non-integer sizes would otherwise surface as a TypeError deep in model building."""
    missing = [k for k in _REQUIRED_SIZES if raw.get(k) is None]
    if missing:
        raise MacllmError(f"{path} lacks {', '.join(missing)}; it does not describe a complete model")
    for key in _REQUIRED_SIZES + _OPTIONAL_SIZES:
        value = raw.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise MacllmError(f"{path}: {key} must be a positive integer, got {value!r}")


def read_weights(folder: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file in weight_files(folder):
        try:
            weights.update(load_arrays(file))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MacllmError(
                f"cannot read {file.name} ({first}); the file may be truncated or damaged, download it again"
            ) from None
    return {k: v for k, v in weights.items() if not k.endswith(_IGNORED_SUFFIXES)}


def load_folder_model(folder: Path) -> tuple[ModelConfig, dict[str, mx.array]]:
    raw = text_model_config(read_config(folder))  # a multimodal checkpoint runs as its text model
    if "model_type" not in raw:
        raise MacllmError(f"{folder / 'config.json'} has no model_type")
    model_class(raw["model_type"])  # clear error for unsupported architectures
    if implementation(raw["model_type"]) == MLX_LM_LABEL:
        cfg = family_config(raw)  # mlx-lm's classes read the raw dict; sizes go by the family's names
    else:
        check_sizes(raw, folder / "config.json")
        cfg = ModelConfig.from_hf_dict(raw)
    weights = read_weights(folder)
    if cfg.tie_word_embeddings:
        for k in [k for k in weights if k.startswith("lm_head.")]:
            del weights[k]
    return cfg, weights
