"""Bake adapters into the weights of a new model folder (what mlx-lm calls fusing).

Quantized layers are dequantized, the low-rank delta added in float32, and the sum quantized again with
the layer's own bits and group size, so the new folder is as small as the original.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from macllm.errors import MacllmError
from macllm.formats.mlx_folder import save_mlx_folder
from macllm.hub import resolve_model
from macllm.loader import read_model_files
from macllm.lora.adapter import Adapter
from macllm.lora.store import fingerprint
from macllm.lora.weight_bounds import weight_problem
from macllm.lora.writable import check_writable
from macllm.quant.weights import layer_quantization


def fuse_weights(weights: dict[str, mx.array], quant: dict | None, adapters: list[tuple[Adapter, float]]
                 ) -> dict[str, mx.array]:
    """New weights dict with sum(weight * scale * B^T A^T) added to every adapted projection."""
    out = dict(weights)
    modules = sorted({m for a, _ in adapters for m in a.weights})
    for module in modules:
        name = f"{module}.weight"
        if name not in weights:
            raise MacllmError(f"the model has no {name} for the adapter to fuse into")
        quantized = f"{module}.scales" in weights
        if quantized:
            if quant is None:
                raise MacllmError(f"{module} is quantized but the model has no quantization settings")
            q = layer_quantization(quant, module)
            w = mx.dequantize(weights[name], weights[f"{module}.scales"], weights.get(f"{module}.biases"),
                              group_size=q["group_size"], bits=q["bits"]).astype(mx.float32)
        else:
            w = weights[name].astype(mx.float32)
        for adapter, weight in adapters:
            if module in adapter.weights:
                delta = weight * adapter.delta(module).astype(mx.float32)
                if delta.shape != w.shape:
                    raise MacllmError(f"adapter {adapter.name!r} does not fit {module}: delta {tuple(delta.shape)}, "
                                      f"weight {tuple(w.shape)}")
                w = w + delta
        if quantized:
            wq, scales, biases = mx.quantize(w, group_size=q["group_size"], bits=q["bits"])
            out[name], out[f"{module}.scales"], out[f"{module}.biases"] = wq, scales, biases
        else:
            out[name] = w.astype(weights[name].dtype)
        mx.eval([out[name]])
    return out


def preflight(adapters: list[tuple[Adapter, float]], out: Path, overwrite: bool) -> None:
    """Refuse what would fail only after the model is loaded and fused: a bad weight, an output folder that
    exists or cannot be written."""
    for adapter, weight in adapters:
        problem = weight_problem(weight)
        if problem:
            raise MacllmError(f"the scale of adapter {adapter.name!r} {problem}")
    if out.exists() and not overwrite:
        raise MacllmError(f"{out} already exists; choose another output folder or remove it")
    check_writable(out.parent, "choose another --out folder")


def fuse_to_folder(model_source: str, adapters: list[tuple[Adapter, float]], out: Path,
                   overwrite: bool = False) -> Path:
    out = Path(out).expanduser()
    preflight(adapters, out, overwrite)
    path = resolve_model(model_source, progress=True)
    cfg, weights, tokenizer, periods = read_model_files(path)
    if periods is not None:
        raise MacllmError(f"{model_source} uses custom RoPE frequencies that a model folder cannot describe")
    fp = fingerprint(cfg)
    for adapter, _ in adapters:
        if adapter.base_fingerprint and adapter.base_fingerprint != fp:
            raise MacllmError(f"adapter {adapter.name!r} was made for {adapter.base_model or 'another model'} "
                              f"({adapter.base_fingerprint}), not {model_source} ({fp})")
    fused = fuse_weights(weights, cfg.quantization, adapters)
    return save_mlx_folder(cfg, fused, tokenizer, out, overwrite=overwrite)  # a failed write: one line, no folder
