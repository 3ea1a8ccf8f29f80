"""Weight (de)quantization for whole models: which matrices are quantized at how many bits, the config's
`quantization` block (per-layer overrides), and dense weights back from quantized triples.

A leaf: the loader, the GGUF importer and `macllm quantize` all use it, and it imports none of them.
The per-matrix arithmetic is in affine.py.
"""

from __future__ import annotations

import threading

import mlx.core as mx

from macllm import backend
from macllm.quant.affine import affine_quantize
from macllm.quant.recipe import MIXED_HIGH_PRECISION


def is_expert_stack(name: str, value: mx.array) -> bool:
    """The (experts, out, in) weight of a mixture-of-experts projection (mlx-lm's `switch_mlp` naming,
    which our MoE models share); other 3-D weights (convolutions) are not matrices to quantize."""
    return value.ndim == 3 and ".switch_mlp." in name


def is_quantizable(name: str, value: mx.array, group_size: int) -> bool:
    """Linear and embedding matrices and stacked experts; norms, biases and odd-sized matrices stay float."""
    shaped = value.ndim == 2 or is_expert_stack(name, value)
    return name.endswith(".weight") and shaped and value.shape[-1] % group_size == 0


def quantize_matrix(value: mx.array, bits: int, group_size: int, importance: mx.array | None,
                    search: bool) -> tuple[mx.array, mx.array, mx.array]:
    """affine_quantize on a matrix, or on each expert of a stack: groups run along rows, so quantizing the
    (experts * out, in) rows at once and restoring the expert axis is the same as one expert at a time."""
    if value.ndim == 2:
        return affine_quantize(value, bits, group_size, importance, search)
    experts, rows, cols = value.shape
    packed, scales, biases = affine_quantize(value.reshape(experts * rows, cols), bits, group_size, importance,
                                             search)
    return (packed.reshape(experts, rows, -1), scales.reshape(experts, rows, -1),
            biases.reshape(experts, rows, -1))


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
        prefix = name[: -len(".weight")]
        # Already-quantized triples (carried over from a GGUF) pass as they are: their packed words are not weights.
        if not is_quantizable(name, value, group_size) or f"{prefix}.scales" in weights:
            out[name] = value
            continue
        layer_bits = bits_of(prefix) if bits_of else bits_for(prefix, bits, mixed)
        if not layer_bits:  # bits_of may keep a layer float
            out[name] = value
            continue
        packed, scales, biases = quantize_matrix(value, layer_bits, group_size, importance.get(prefix), search)
        mx.eval(packed, scales, biases)  # one matrix at a time keeps peak memory low
        out[name], out[f"{prefix}.scales"], out[f"{prefix}.biases"] = packed, scales, biases
        if layer_bits != bits:
            quant[prefix] = {"group_size": group_size, "bits": layer_bits}
    return out, quant


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
