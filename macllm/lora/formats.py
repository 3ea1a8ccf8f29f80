"""Adapter folders on disk: mlx-lm's format (read + write) and Hugging Face PEFT's (read).

mlx-lm: adapter_config.json {fine_tune_type, num_layers, lora_parameters: {rank, scale, dropout, keys}}
        + adapters.safetensors with `<module path>.lora_a` (in x rank) and `.lora_b` (rank x out); on the
        experts of a mixture-of-experts layer (experts x rank x in) and (experts x out x rank).
PEFT:   adapter_config.json {peft_type: LORA, r, lora_alpha, target_modules, ...}
        + adapter_model.safetensors with `base_model.model.<module path>.lora_A.weight` (rank x in) and
        `.lora_B.weight` (out x rank); scale = lora_alpha / r (or / sqrt(r) with use_rslora).
Our own extras ride along in mlx-lm's config under "macllm" (mlx-lm ignores unknown keys).
Every problem is one MacllmError naming the file; nothing is returned half-read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx

from macllm.errors import MacllmError
from macllm.formats.arrays import load_arrays, save_arrays
from macllm.lora.adapter import Adapter
from macllm.storage.atomic import atomic_folder

CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def read_adapter(folder: Path, name: str | None = None) -> Adapter:
    folder = Path(folder)
    if not folder.is_dir():
        raise MacllmError(f"adapter folder {folder} does not exist")
    config = _read_config(folder)
    name = name or folder.name
    if "peft_type" in config or (folder / PEFT_WEIGHTS).exists():
        return _read_peft(folder, config, name)
    return _read_mlx_lm(folder, config, name)


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.exists():
        raise MacllmError(f"{folder} has no {CONFIG}; it is not an adapter folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MacllmError(f"{path} is not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(config, dict):
        raise MacllmError(f"{path} is not an adapter config (expected a JSON object)")
    return config


def _load_tensors(path: Path) -> dict[str, mx.array]:
    if not path.exists():
        raise MacllmError(f"{path.parent} has no {path.name}")
    try:
        tensors = load_arrays(path)  # the header is checked before MLX reads the file
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MacllmError(f"cannot read {path} ({first}); the file is truncated or damaged") from None
    if not isinstance(tensors, dict) or not tensors:
        raise MacllmError(f"{path} holds no tensors")
    _check_finite(tensors, path)
    return tensors


def _check_finite(tensors: dict[str, mx.array], path: Path,
                  verdict: str = "the adapter is damaged (train it again or remove it)") -> None:
    """An adapter with a NaN or inf anywhere makes every answer NaN: refuse it, naming the tensor."""
    names = list(tensors)
    finite = mx.stack([mx.all(mx.isfinite(tensors[n])) for n in names])  # one evaluation for all
    for i, name in enumerate(names):
        if not finite[i].item():
            raise MacllmError(f"{path}: tensor {name} holds NaN or infinite values; {verdict}")


def _number(config: dict, key: str, path: Path, kind=float):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (kind is int and value != int(value)):
        raise MacllmError(f"{path}: {key} must be a finite number, got {value!r}")
    return kind(value)


def _pairs(tensors: dict, a_suffix: str, b_suffix: str, strip: str, path: Path) -> dict[str, list]:
    """module path -> [A-tensor, B-tensor] as stored; every tensor must be one half of a pair."""
    pairs: dict[str, list] = {}
    for key, value in tensors.items():
        body = key[len(strip):] if strip and key.startswith(strip) else key
        for i, suffix in enumerate((a_suffix, b_suffix)):
            if body.endswith(suffix):
                pairs.setdefault(body[: -len(suffix)], [None, None])[i] = value
                break
        else:
            raise MacllmError(f"{path}: tensor {key} is not a LoRA {a_suffix.strip('.')}/{b_suffix.strip('.')} "
                              f"weight (only LoRA on linear layers is supported)")
    for module, (a, b) in pairs.items():
        if a is None or b is None:
            raise MacllmError(f"{path}: {module} has only one of its two LoRA matrices")
        if a.ndim != b.ndim or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != b.shape[0]):
            raise MacllmError(f"{path}: {module} LoRA matrices must be 2-D (a linear layer) or 3-D with one "
                              f"pair per expert (a mixture-of-experts layer)")
    return pairs


def _check_rank(pairs: dict[str, tuple], rank: int, path: Path) -> None:
    for module, (a, b) in pairs.items():
        if a.shape[-1] != rank or b.shape[-2] != rank:
            raise MacllmError(f"{path}: {module} has rank {a.shape[-1]}x{b.shape[-2]} but the config says "
                              f"rank {rank}")


def _from_mlx_lm(a: mx.array, b: mx.array) -> tuple[mx.array, mx.array]:
    """mlx-lm's per-expert pairs are (experts, rank, in) and (experts, out, rank); ours are (experts, in,
    rank) and (experts, rank, out), the plain layout with an expert axis in front. Plain pairs pass."""
    return (a.swapaxes(-1, -2), b.swapaxes(-1, -2)) if a.ndim == 3 else (a, b)


def _read_mlx_lm(folder: Path, config: dict, name: str) -> Adapter:
    cpath = folder / CONFIG
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise MacllmError(f"{cpath}: fine_tune_type {kind!r} is not supported (only LoRA adapters)")
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise MacllmError(f"{cpath} has no lora_parameters block")
    rank = _number(params, "rank", cpath, int)
    scale = _number(params, "scale", cpath)
    dropout = float(params.get("dropout") or 0.0)
    wpath = folder / MLX_WEIGHTS
    raw = _pairs(_load_tensors(wpath), ".lora_a", ".lora_b", "", wpath)
    pairs = {m: _from_mlx_lm(a, b) for m, (a, b) in raw.items()}
    _check_rank(pairs, rank, wpath)
    ours = config.get("macllm")
    if not isinstance(ours, dict):
        ours = {}
    return Adapter(
        name=name, rank=rank, scale=scale, weights=pairs, dropout=dropout,
        num_layers=config.get("num_layers"), keys=list(params.get("keys") or []),
        base_model=ours.get("base_model") or config.get("model"),
        base_fingerprint=ours.get("base_fingerprint"), created=ours.get("created"),
        training=ours.get("training"), format="mlx-lm", path=folder)


def _read_peft(folder: Path, config: dict, name: str) -> Adapter:
    cpath = folder / CONFIG
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise MacllmError(f"{cpath}: peft_type {config.get('peft_type')!r} is not supported (only LORA)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise MacllmError(f"{cpath}: per-layer rank_pattern/alpha_pattern is not supported")
    if config.get("use_dora"):
        raise MacllmError(f"{cpath}: DoRA adapters are not supported")
    rank = _number(config, "r", cpath, int)
    alpha = _number(config, "lora_alpha", cpath)
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    wpath = folder / PEFT_WEIGHTS
    if not wpath.exists() and (folder / MLX_WEIGHTS).exists():
        raise MacllmError(f"{cpath} is a PEFT config but the folder holds mlx-lm weights")
    raw = _pairs(_load_tensors(wpath), ".lora_A.weight", ".lora_B.weight", PEFT_PREFIX, wpath)
    if any(a.ndim != 2 for a, _ in raw.values()):
        raise MacllmError(f"{wpath}: PEFT adapters on mixture-of-experts layers are not supported (use "
                          f"mlx-lm's format)")
    pairs = {m: (a.T, b.T) for m, (a, b) in raw.items()}  # PEFT stores them as nn.Linear weights
    _check_rank(pairs, rank, wpath)
    keys = sorted({m.split(".layers.")[-1].split(".", 1)[-1] for m in pairs})
    return Adapter(
        name=name, rank=rank, scale=scale, weights=pairs, dropout=float(config.get("lora_dropout") or 0.0),
        keys=keys, base_model=config.get("base_model_name_or_path"),
        format="peft", path=folder)


def write_adapter(adapter: Adapter, out: Path, num_model_layers: int, overwrite: bool = False) -> Path:
    """mlx-lm's format, written into a temporary sibling and renamed into place (atomic)."""
    out = Path(out)
    layers = adapter.layer_indices
    # mlx-lm wraps the last `num_layers` layers; cover from the first adapted one to the end.
    num_layers = num_model_layers - min(layers) if layers else 0
    keys = adapter.keys or sorted({m.split(".layers.")[-1].split(".", 1)[-1] for m in adapter.weights})
    config = {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": adapter.rank, "scale": adapter.scale, "dropout": adapter.dropout,
                            "keys": keys},
        "model": adapter.base_model,
        "macllm": {"base_model": adapter.base_model, "base_fingerprint": adapter.base_fingerprint,
                   "created": adapter.created, "training": adapter.training},
    }
    tensors = {}
    for module, (a, b) in adapter.weights.items():
        a, b = _from_mlx_lm(a, b)  # the swap is its own inverse: back to mlx-lm's per-expert layout
        tensors[f"{module}.lora_a"] = a
        tensors[f"{module}.lora_b"] = b
    _check_finite(tensors, out, "will not write it (a training that diverged? lower --lr)")
    with atomic_folder(out, overwrite) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        save_arrays(tmp / MLX_WEIGHTS, tensors, metadata={"format": "mlx"})
    return out
