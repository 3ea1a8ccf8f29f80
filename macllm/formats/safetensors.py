"""Hugging Face / mlx-community model folders: config.json + one or sharded *.safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from macllm.config import ModelConfig
from macllm.errors import MacllmError

# Tensors some checkpoints carry that no architecture here needs (recomputed at run time).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise MacllmError(f"{folder} has no config.json; pass a Hugging Face model folder or a .gguf file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MacllmError(f"{path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError):
            raise MacllmError(f"{index} is damaged (no weight_map); download the model again") from None
        files = [folder / s for s in shards]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise MacllmError(f"{folder} is missing weight shard(s) {', '.join(missing)}; download it again")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MacllmError(f"{folder} has no *.safetensors weights")
    return files


def read_weights(folder: Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for file in weight_files(folder):
        try:
            weights.update(mx.load(str(file)))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MacllmError(
                f"cannot read {file.name} ({first}); the file may be truncated or damaged, download it again"
            ) from None
    return {k: v for k, v in weights.items() if not k.endswith(_IGNORED_SUFFIXES)}


def load_folder_model(folder: Path) -> tuple[ModelConfig, dict[str, mx.array]]:
    raw = read_config(folder)
    if "model_type" not in raw:
        raise MacllmError(f"{folder / 'config.json'} has no model_type")
    from macllm.models import model_class

    model_class(raw["model_type"])  # clear error for unsupported architectures
    cfg = ModelConfig.from_hf_dict(raw)
    weights = read_weights(folder)
    if cfg.tie_word_embeddings:
        for k in [k for k in weights if k.startswith("lm_head.")]:
            del weights[k]
    return cfg, weights
