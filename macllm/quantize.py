"""Affine (min/max) quantization of weight matrices into MLX's packed layout, and whole-model conversion.

Each group of `group_size` values gets scale = (max - min) / (2**bits - 1) and bias = min; values are
stored as round((w - min) / scale). This is exactly GGUF's Q4_1 recipe, so re-quantizing Q4_1 weights at
4 bits, group 32 reproduces them bit for bit. (mx.quantize picks scale and bias slightly differently.)
The packing is MLX's: 32 // bits values per uint32, the first in the lowest bits; mx.dequantize and
nn.QuantizedLinear read it directly.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from macllm.errors import MacllmError

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
# --mixed keeps these at 8 bits: the embedding/head see every token, and the value and down projections
# are the most sensitive matrices in published mixed recipes.
MIXED_HIGH_PRECISION = ("embed_tokens", "lm_head", "v_proj", "down_proj")
SCALES_DTYPE = mx.float16


def affine_quantize(w: mx.array, bits: int = 4, group_size: int = 32,
                    scales_dtype=SCALES_DTYPE) -> tuple[mx.array, mx.array, mx.array]:
    """(packed uint32 weights, scales, biases) for a 2-D matrix, MLX layout."""
    rows, cols = w.shape
    if cols % group_size:
        raise MacllmError(f"cannot quantize a matrix of width {cols} in groups of {group_size}")
    levels = (1 << bits) - 1
    groups = w.astype(mx.float32).reshape(rows, cols // group_size, group_size)
    low = groups.min(axis=-1, keepdims=True)
    high = groups.max(axis=-1, keepdims=True)
    # Scale in float64 (float32 division can land one float16 step off), then rounded to its stored
    # precision before the integers are chosen, so they fit what is stored.
    spread = np.array(high, dtype=np.float64) - np.array(low, dtype=np.float64)
    scales = mx.array(spread / levels).astype(scales_dtype)
    biases = low.astype(scales_dtype)
    s32, b32 = scales.astype(mx.float32), biases.astype(mx.float32)
    safe = mx.where(s32 == 0, 1.0, s32)
    q = mx.clip(mx.round((groups - b32) / safe), 0, levels).astype(mx.uint32)
    per_word = 32 // bits
    q = q.reshape(rows, cols // per_word, per_word)
    shifts = mx.arange(per_word, dtype=mx.uint32) * bits
    packed = (q << shifts).sum(axis=-1).astype(mx.uint32)  # disjoint bit fields: sum == bitwise or
    return packed, scales.squeeze(-1), biases.squeeze(-1)


def is_quantizable(name: str, value: mx.array, group_size: int) -> bool:
    """Linear and embedding matrices; norms, biases and odd-sized matrices stay float."""
    return name.endswith(".weight") and value.ndim == 2 and value.shape[-1] % group_size == 0


def bits_for(prefix: str, bits: int, mixed: bool) -> int:
    if mixed and prefix.rsplit(".", 1)[-1] in MIXED_HIGH_PRECISION:
        return max(bits, 8)
    return bits


def quantize_weights(weights: dict[str, mx.array], bits: int = 4, group_size: int = 64,
                     mixed: bool = False, bits_of=None) -> tuple[dict[str, mx.array], dict]:
    """Float weights -> quantized triples and the config's `quantization` block (per-layer overrides
    for layers whose bits differ). `bits_of(prefix)` may choose bits per layer instead of `mixed`
    (None: keep that layer float)."""
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
        packed, scales, biases = affine_quantize(value, layer_bits, group_size)
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
            progress: bool = False) -> dict:
    """A model (HF folder, MLX folder, any GGUF, catalog name) -> an MLX folder quantized as asked.
    The folder appears only when complete (save_mlx_folder writes a temp sibling, then renames)."""
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
    cfg, weights, tokenizer = float_weights(resolve_model(source, progress=progress))
    weights, quant = quantize_weights(weights, bits, group_size, mixed)
    cfg.quantization = quant
    save_mlx_folder(cfg, weights, tokenizer, out)
    kept = sorted(k for k in quant if isinstance(quant[k], dict))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"output": str(out), "bits": bits, "group_size": group_size, "mixed": mixed,
            "higher_precision_layers": kept, "size_bytes": size}
