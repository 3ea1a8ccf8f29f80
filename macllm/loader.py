"""Model source -> a ready model: resolve, read the format, build the architecture, pick compute dtype."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from macllm import backend
from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.models import model_class


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    config: ModelConfig
    info: dict = field(default_factory=dict)


def count_parameters(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def layer_quantization(quant: dict, prefix: str) -> dict:
    override = quant.get(prefix)
    if isinstance(override, dict):
        return {"group_size": override["group_size"], "bits": override["bits"]}
    return {"group_size": quant["group_size"], "bits": quant["bits"]}


_per_thread = threading.local()


def load_streams() -> list:
    """MLX runs each CPU stream's ops on its own thread, but one stream uses one core: spreading the
    dequantization of a model over two streams makes loading ~30% faster on the CPU path. Streams
    belong to the thread that made them, so each loading thread (an Engine's) gets its own pair."""
    streams = getattr(_per_thread, "streams", None)
    if streams is None:
        if backend.is_metal():
            streams = [mx.default_stream(mx.gpu)]
        else:
            streams = [mx.new_stream(mx.cpu) for _ in range(2)]
        _per_thread.streams = streams
    return streams


def dequantize_all(weights: dict[str, mx.array], quant: dict, dtype=mx.float32) -> dict[str, mx.array]:
    """Quantized (weight, scales, biases) triples -> dense weights; floats cast to `dtype`."""
    out = {}
    streams = load_streams()
    for i, (name, value) in enumerate(weights.items()):
        if name.endswith((".scales", ".biases")):
            continue
        stream = streams[i % len(streams)]
        prefix = name[: -len(".weight")] if name.endswith(".weight") else None
        if prefix and f"{prefix}.scales" in weights:
            q = layer_quantization(quant, prefix)
            # Scales in the compute dtype: float16 arithmetic would round every weight to float16.
            scales = weights[f"{prefix}.scales"].astype(dtype, stream=stream)
            biases = weights.get(f"{prefix}.biases")
            biases = None if biases is None else biases.astype(dtype, stream=stream)
            value = mx.dequantize(value, scales, biases, group_size=q["group_size"], bits=q["bits"],
                                  stream=stream)
        out[name] = value.astype(dtype, stream=stream)
    return out


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
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        count = len(missing) + len(extra)
        raise MacllmError(f"weights in {source} do not fit the {model.model_type} architecture ({what}; "
                          f"{count} mismatched tensor(s))")
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise MacllmError(f"weights in {source} do not fit the architecture: {name} has shape "
                              f"{tuple(value.shape)}, expected {tuple(expected[name].shape)}")
    model.load_weights(list(weights.items()), strict=False)


def read_model_files(path: Path):
    """(config, weights, tokenizer, rope_periods, source description) for a .gguf file or a folder."""
    from macllm.tokenizer import Tokenizer

    if path.is_file():
        from macllm.formats.gguf_import import import_cache_path, imported_folder
        from macllm.formats.gguf_model import NeedsImport, load_gguf_model

        if not (import_cache_path(path) / "config.json").is_file():
            try:
                cfg, weights, meta, periods = load_gguf_model(path)
                return cfg, weights, Tokenizer.from_gguf_metadata(meta), periods
            except NeedsImport:
                pass
        path = imported_folder(path, progress=True)
    from macllm.formats.safetensors import load_folder_model

    cfg, weights = load_folder_model(path)
    return cfg, weights, Tokenizer.from_folder(path), None


def read_tokenizer(path: Path):
    """Just the tokenizer (fast: GGUF metadata only, or tokenizer files in a folder)."""
    from macllm.tokenizer import Tokenizer

    if path.is_file():
        from macllm.formats.gguf_header import read_header

        meta, _ = read_header(path)  # reads any tensor type (mx.load refuses k-quants)
        return Tokenizer.from_gguf_metadata(meta)
    return Tokenizer.from_folder(path)


def build_model(cfg: ModelConfig, weights: dict, rope_periods=None, keep_quantized: bool = False,
                source: str = "model") -> tuple[nn.Module, dict]:
    model = model_class(cfg.model_type)(cfg, rope_periods)
    params = count_parameters(model)
    quant = cfg.quantization
    if quant and backend.should_compute_float32(params, keep_quantized):
        weights = dequantize_all(weights, quant, mx.float32)
        compute = "float32 (dequantized for the CPU fast path)"
    elif quant:
        _quantize_like_weights(model, weights, quant)
        compute = f"{quant['bits']}-bit quantized (group {quant['group_size']})"
    elif not backend.is_metal() and not keep_quantized:
        weights = {k: v.astype(mx.float32) for k, v in weights.items()}
        compute = "float32"
    else:
        compute = str(next(iter(weights.values())).dtype).replace("mlx.core.", "")
    _load_strict(model, weights, source)
    mx.eval(model.parameters())
    model.eval()
    info = {"parameters": params, "compute": compute,
            "quantization": (f"{quant['bits']}-bit g{quant['group_size']}" if quant else "none")}
    return model, info


def load_model(source: str, keep_quantized: bool = False, progress: bool = True) -> LoadedModel:
    from macllm.hub import resolve_model

    path = resolve_model(source, progress=progress)
    cfg, weights, tokenizer, periods = read_model_files(path)
    model, info = build_model(cfg, weights, periods, keep_quantized, source=path.name)
    backend.configure_metal()
    info.update({"source": source, "path": str(path), "architecture": cfg.model_type,
                 "context_length": cfg.max_position_embeddings})
    return LoadedModel(model=model, tokenizer=tokenizer, config=cfg, info=info)
