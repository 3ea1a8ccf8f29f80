"""Model source -> a ready model: resolve, read the format, build the architecture, pick compute dtype."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from macllm import backend, cpu_kernels
from macllm.config import ModelConfig
from macllm.cpu_kernels.layers import use_cpu_kernel
from macllm.errors import MacllmError
from macllm.formats.gguf_header import read_header
from macllm.formats.gguf_import import import_cache_path, imported_folder
from macllm.formats.gguf_model import NeedsImport, load_gguf_model
from macllm.formats.names import shown
from macllm.formats.safetensors import load_folder_model
from macllm.hub import resolve_model
from macllm.loaded import LoadedModel, ModelInfo
from macllm.models import model_class
from macllm.models.implementation import OWN_LABEL
from macllm.quant.weights import dequantize_all, layer_quantization
from macllm.tokenizer import Tokenizer


def count_parameters(model: nn.Module) -> int:
    leaves = tree_flatten(model.parameters())
    assert isinstance(leaves, list)  # mlx types it as list | dict; a plain flatten gives the list
    return sum(v.size for _, v in leaves)


def _quantize_like_weights(model: nn.Module, weights: dict, quant: dict) -> None:
    def predicate(path, module):
        if f"{path}.scales" not in weights:
            return False
        return layer_quantization(quant, path)

    nn.quantize(model, class_predicate=predicate)


def _load_strict(model: nn.Module, weights: dict[str, mx.array], source: str) -> None:
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {shown(extra[0])}"  # names from the file
        count = len(missing) + len(extra)
        raise MacllmError(f"weights in {source} do not fit the {model.model_type} architecture ({what}; "
                          f"{count} mismatched tensor(s))")
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise MacllmError(f"weights in {source} do not fit the architecture: {shown(name)} has shape "
                              f"{tuple(value.shape)}, expected {tuple(expected[name].shape)}")
    model.load_weights(list(weights.items()), strict=False)


def _float32_unquantized(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Norms and biases in float32 (the quantized triples stay as stored), so activations are float32
    after the first layer: MLX's CPU ops on float16 convert every element and lose precision."""
    quantized = {k[: -len(".scales")] for k in weights if k.endswith(".scales")}
    out = {}
    for name, value in weights.items():
        prefix = name.rsplit(".", 1)[0]
        keep = prefix in quantized and name != f"{prefix}.bias"
        out[name] = value if keep or not mx.issubdtype(value.dtype, mx.floating) else value.astype(mx.float32)
    return out


def read_model_files(path: Path):
    """(config, weights, tokenizer, rope_periods, source description) for a .gguf file or a folder."""
    if path.is_file():
        if not (import_cache_path(path) / "config.json").is_file():
            try:
                cfg, weights, meta, periods = load_gguf_model(path)
                return cfg, weights, Tokenizer.from_gguf_metadata(meta), periods
            except NeedsImport:
                pass
        path = imported_folder(path, progress=True)
    cfg, weights = load_folder_model(path)
    return cfg, weights, Tokenizer.from_folder(path), None


def read_tokenizer(path: Path):
    """Just the tokenizer (fast: GGUF metadata only, or tokenizer files in a folder)."""
    if path.is_file():
        meta, _ = read_header(path)  # reads any tensor type (mx.load refuses k-quants)
        return Tokenizer.from_gguf_metadata(meta)
    return Tokenizer.from_folder(path)


def build_model(cfg: ModelConfig, weights: dict, rope_periods=None, keep_quantized: bool = False,
                source: str = "model", cpu_kernel: bool = True) -> tuple[nn.Module, ModelInfo]:
    """`cpu_kernel=False` keeps quantized layers off our CPU kernel (training does, unless it keeps the
    base quantized: the backward product would run MLX's much slower transposed quantized matmul)."""
    model = model_class(cfg.model_type)(cfg, rope_periods)
    weights = model.sanitize(weights)  # checkpoint layout -> ours (e.g. per-expert tensors stacked)
    params = count_parameters(model)
    quant = cfg.quantization
    # On the CPU with our kernel built, compute on the stored weights (docs/kernels.md).
    kernel = bool(quant) and cpu_kernel and not backend.is_metal() and cpu_kernels.enabled()
    if quant and not kernel and backend.should_compute_float32(params, keep_quantized):
        weights = dequantize_all(weights, quant, mx.float32)
        compute = "float32 (dequantized for the CPU fast path)"
    elif quant:
        _quantize_like_weights(model, weights, quant)
        compute = f"{quant['bits']}-bit quantized (group {quant['group_size']})"
        if kernel:
            weights = _float32_unquantized(weights)
    elif not backend.is_metal() and not keep_quantized:
        weights = {k: v.astype(mx.float32) for k, v in weights.items()}
        compute = "float32"
    else:
        compute = str(next(iter(weights.values())).dtype).replace("mlx.core.", "")
    _load_strict(model, weights, source)
    if kernel and use_cpu_kernel(model):
        compute += f", our CPU kernel ({cpu_kernels.summary()})"
    mx.eval(model.parameters())
    model.eval()
    info = ModelInfo(source=source, path="", architecture=cfg.model_type, context_length=cfg.max_position_embeddings,
                     parameters=params, compute=compute,
                     quantization=f"{quant['bits']}-bit g{quant['group_size']}" if quant else "none",
                     implementation=getattr(model, "implementation", OWN_LABEL))
    return model, info


def load_model(source: str, keep_quantized: bool = False, progress: bool = True,
               cpu_kernel: bool = True) -> LoadedModel:
    path = resolve_model(source, progress=progress)
    cfg, weights, tokenizer, periods = read_model_files(path)
    model, info = build_model(cfg, weights, periods, keep_quantized, source=path.name, cpu_kernel=cpu_kernel)
    backend.configure_metal()
    return LoadedModel(model=model, tokenizer=tokenizer, config=cfg, info=replace(info, source=source, path=str(path)))
