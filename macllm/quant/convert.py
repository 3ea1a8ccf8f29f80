"""Whole-model conversion to MLX's quantized layout: which matrices, at how many bits, and the config's
`quantization` block that macllm and mlx-lm both read. The per-matrix arithmetic is in affine.py.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import mlx.core as mx

from macllm.errors import MacllmError
from macllm.formats.gguf_model import load_gguf_dequantized
from macllm.formats.mlx_folder import save_mlx_folder
from macllm.formats.safetensors import load_folder_model
from macllm.hub import resolve_model
from macllm.loader import build_model
from macllm.quant.calibration import activation_importance, read_calibration_text
from macllm.quant.distill import distill_scales
from macllm.quant.recipe import BITS, CALIBRATION_TOKENS, GROUP_SIZES
from macllm.quant.weights import dequantize_all, quantize_weights
from macllm.tokenizer import Tokenizer


def float_weights(path):
    """(config, float weights, tokenizer) of a model file or folder, whatever its storage."""
    path = Path(path)
    if path.is_file():
        cfg, weights, meta, _ = load_gguf_dequantized(path)  # exact, like llama.cpp's
        tokenizer = Tokenizer.from_gguf_metadata(meta)
    else:
        cfg, weights = load_folder_model(path)
        tokenizer = Tokenizer.from_folder(path)
    if cfg.quantization:
        weights = dequantize_all(_float32_scales(weights), cfg.quantization, mx.float32)
    for stale in ("quantization_config", "torch_dtype"):
        cfg.extra.pop(stale, None)
    return cfg, weights, tokenizer


def _float32_scales(weights: dict) -> dict:
    """Dequantizing with float16 scales would round the result to float16; float32 keeps it exact."""
    return {k: v.astype(mx.float32) if k.endswith((".scales", ".biases")) else v for k, v in weights.items()}


def convert(source: str, out, bits: int = 4, group_size: int = 64, mixed: bool = False,
            progress: bool = False, search: bool = True, calibrate=None,
            calibration_tokens: int = CALIBRATION_TOKENS, distill_epochs: int = 0) -> dict:
    """A model (HF folder, MLX folder, any GGUF, catalog name) -> an MLX folder quantized as asked.
    `calibrate`: a text file or folder whose activations weight the rounding error (see calibration.py);
    `distill_epochs` > 0 then also trains scales and biases against the float model on it (distill.py).
    The folder appears only when complete (save_mlx_folder writes a temp sibling, then renames)."""
    if bits not in BITS:
        raise MacllmError(f"--bits must be one of {', '.join(map(str, BITS))}, got {bits}")
    if group_size not in GROUP_SIZES:
        raise MacllmError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {group_size}")
    out = Path(out)
    if out.exists():
        raise MacllmError(f"{out} already exists; choose another output folder or remove it")
    started = time.perf_counter()
    cfg, weights, tokenizer = float_weights(resolve_model(source, progress=progress))
    if distill_epochs and calibrate is None:
        raise MacllmError("--distill needs calibration text: add --calibrate FILE_OR_FOLDER")
    importance, ids = None, []
    if calibrate is not None:
        importance, ids = _calibrate(cfg, weights, tokenizer, calibrate, calibration_tokens)
    qweights, quant = quantize_weights(dict(weights), bits, group_size, mixed, search=search,
                                       importance=importance)
    if distill_epochs:
        qweights = distill_scales(cfg, weights, qweights, quant, ids, distill_epochs, progress=progress)
    del weights
    weights = qweights
    cfg.quantization = quant
    save_mlx_folder(cfg, weights, tokenizer, out)
    kept = sorted(k for k in quant if isinstance(quant[k], dict))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"output": str(out), "bits": bits, "group_size": group_size, "mixed": mixed,
            "higher_precision_layers": kept, "size_bytes": size,
            "method": _method(search, bool(ids), distill_epochs), "calibration_tokens": len(ids),
            "seconds": round(time.perf_counter() - started, 1)}


def _method(search: bool, calibrated: bool, distill_epochs: int) -> str:
    method = ("importance-weighted search" if calibrated else "search") if search else "min/max"
    return method + (f" + scales distilled ({distill_epochs} epochs)" if distill_epochs else "")


def _calibrate(cfg, weights, tokenizer, text_path, max_tokens: int):
    """(importance per layer, the calibration token ids) from the float model reading the text."""
    ids = tokenizer.encode(read_calibration_text(text_path))[:max_tokens]
    float_cfg = copy.copy(cfg)
    float_cfg.quantization = None
    model, _ = build_model(float_cfg, dict(weights))
    tied = "lm_head.weight" not in weights
    return activation_importance(model, ids, tied), ids
