"""Whole-model conversion to MLX's quantized layout: which matrices, at how many bits, and the config's
`quantization` block that macllm and mlx-lm both read. The per-matrix arithmetic is in affine.py.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.affine import affine_quantize
from macllm.errors import MacllmError

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
# --mixed keeps these at 8 bits: the embedding/head see every token, and the value and down projections
# are the most sensitive matrices in published mixed recipes.
MIXED_HIGH_PRECISION = ("embed_tokens", "lm_head", "v_proj", "down_proj")
CALIBRATION_TOKENS = 8192


def is_quantizable(name: str, value: mx.array, group_size: int) -> bool:
    """Linear and embedding matrices; norms, biases and odd-sized matrices stay float."""
    return name.endswith(".weight") and value.ndim == 2 and value.shape[-1] % group_size == 0


def bits_for(prefix: str, bits: int, mixed: bool) -> int:
    if mixed and prefix.rsplit(".", 1)[-1] in MIXED_HIGH_PRECISION:
        return max(bits, 8)
    return bits


def quantize_weights(weights: dict[str, mx.array], bits: int = 4, group_size: int = 64,
                     mixed: bool = False, bits_of=None, search: bool = False,
                     importance: dict[str, mx.array] | None = None) -> tuple[dict[str, mx.array], dict]:
    """Float weights -> quantized triples and the config's `quantization` block (per-layer overrides
    for layers whose bits differ). `bits_of(prefix)` may choose bits per layer instead of `mixed`
    (None: keep that layer float). `search` and `importance` (per layer prefix) go to affine_quantize."""
    importance = importance or {}
    out: dict[str, mx.array] = {}
    quant: dict = {"group_size": group_size, "bits": bits}
    for name, value in weights.items():
        if not is_quantizable(name, value, group_size):
            out[name] = value
            continue
        prefix = name[: -len(".weight")]
        layer_bits = bits_of(prefix) if bits_of else bits_for(prefix, bits, mixed)
        if not layer_bits:  # bits_of may keep a layer float
            out[name] = value
            continue
        packed, scales, biases = affine_quantize(value, layer_bits, group_size, importance.get(prefix), search)
        mx.eval(packed, scales, biases)  # one matrix at a time keeps peak memory low
        out[name], out[f"{prefix}.scales"], out[f"{prefix}.biases"] = packed, scales, biases
        if layer_bits != bits:
            quant[prefix] = {"group_size": group_size, "bits": layer_bits}
    return out, quant


def float_weights(path):
    """(config, float weights, tokenizer) of a model file or folder, whatever its storage."""
    from pathlib import Path

    from macllm.loader import dequantize_all
    from macllm.tokenizer import Tokenizer

    path = Path(path)
    if path.is_file():
        from macllm.formats.gguf_model import load_gguf_dequantized

        cfg, weights, meta, _ = load_gguf_dequantized(path)  # exact, like llama.cpp's
        tokenizer = Tokenizer.from_gguf_metadata(meta)
    else:
        from macllm.formats.safetensors import load_folder_model

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
    import time
    from pathlib import Path

    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.hub import resolve_model

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
        from macllm.distill import distill_scales

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
    from macllm.calibration import activation_importance, read_calibration_text
    from macllm.loader import build_model

    import copy

    ids = tokenizer.encode(read_calibration_text(text_path))[:max_tokens]
    float_cfg = copy.copy(cfg)
    float_cfg.quantization = None
    model, _ = build_model(float_cfg, dict(weights))
    tied = "lm_head.weight" not in weights
    return activation_importance(model, ids, tied), ids
