"""GGUF tensors of any type the gguf package knows (Q4_K, Q5_0, Q6_K, Q2_K, BF16, ...) as float arrays.

MLX's own GGUF loader reads only F32, F16, Q4_0, Q4_1 and Q8_0. Everything else is dequantized here with
`gguf.quants.dequantize`, which computes exactly the values llama.cpp computes with.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np

from macllm.errors import MacllmError
from macllm.formats.gguf_blocks import LAYOUTS, read_exact
from macllm.formats.gguf_header import TensorInfo, read_header, tensor_nbytes
from macllm.formats.names import shown

# Re-quantizing (types without an exact MLX layout): a tensor stored with at least this many bits per
# weight gets 8 bits, others 4.
HIGH_PRECISION_BITS = 6.0


def type_name(type_id: int) -> str:
    try:
        return gguf.GGMLQuantizationType(type_id).name
    except ValueError:
        return f"unknown type {type_id}"


def stored_bits(type_id: int) -> float:
    """Bits per weight as stored (Q4_K: 4.5, Q6_K: 6.56, F16: 16)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    return size * 8 / block


def requantize_bits(type_id: int) -> int:
    return 8 if stored_bits(type_id) >= HIGH_PRECISION_BITS else 4


def is_float_type(type_id: int) -> bool:
    return type_name(type_id) in ("F32", "F16", "BF16", "F64")


def check_types(infos: list[TensorInfo], path: Path) -> None:
    """Name the first tensor whose type neither we nor the gguf package can read."""
    checked = set()
    for info in infos:
        name = type_name(info.type_id)
        if info.type_id in checked or is_float_type(info.type_id):
            continue
        checked.add(info.type_id)
        if name.startswith("unknown"):
            raise MacllmError(f"{path.name}: tensor {shown(info.name)} has an {name}; this GGUF is newer than macllm "
                              "understands or damaged")
        qtype = gguf.GGMLQuantizationType(info.type_id)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            gguf.quants.dequantize(np.zeros((1, size), np.uint8), qtype)
        except NotImplementedError:
            raise MacllmError(f"{path.name}: tensor {shown(info.name)} uses GGUF type {name}, which macllm cannot "
                              "import yet") from None


def tensor_bytes(data: np.ndarray, info: TensorInfo) -> np.ndarray:
    """The stored bytes of one tensor in the memory-mapped file."""
    nbytes = tensor_nbytes(info)
    raw = data[info.offset:info.offset + nbytes]
    if len(raw) < nbytes:
        raise MacllmError(f"tensor {shown(info.name)} runs past the end of the file; the GGUF is truncated")
    return raw


def read_tensor(data: np.ndarray, info: TensorInfo) -> np.ndarray:
    """One tensor from the memory-mapped file, dequantized to float32 (floats keep their dtype)."""
    qtype = gguf.GGMLQuantizationType(info.type_id)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = tensor_bytes(data, info)
    name = qtype.name
    if name in ("F32", "F16", "F64"):
        return raw.view({"F32": np.float32, "F16": np.float16, "F64": np.float64}[name]).reshape(info.shape)
    rows = raw.reshape(*info.shape[:-1], info.shape[-1] // block * size)
    return gguf.quants.dequantize(rows, qtype).reshape(info.shape)


def read_dequantized(path: Path, keep_exact: bool = False) -> tuple[dict[str, mx.array], dict, dict[str, int]]:
    """(tensors as float mx arrays, metadata, type id per tensor name). With `keep_exact`, matrices whose
    type fits MLX's affine layout exactly (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K; gguf_blocks) come back
    as (weight, scales, biases) triples instead, rounded no further than their float16 scales."""
    path = Path(path)
    meta, infos = read_header(path)
    check_types(infos, path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors, types = {}, {}
    for info in infos:
        types[info.name] = info.type_id
        name = type_name(info.type_id)
        # Matrices, and stacked experts (experts, out, in): read_exact works on rows, whatever leads them.
        if keep_exact and name in LAYOUTS and len(info.shape) in (2, 3) and info.name.endswith(".weight"):
            exact = read_exact(tensor_bytes(data, info), name, info.shape)
            if exact is not None:
                packed, scales, biases, _ = exact
                prefix = info.name[: -len(".weight")]
                lead = tuple(info.shape[:-1])
                tensors[info.name] = mx.array(packed.reshape(*lead, -1))
                tensors[prefix + ".scales"] = mx.array(scales.reshape(*lead, -1)).astype(mx.float16)
                tensors[prefix + ".biases"] = mx.array(biases.reshape(*lead, -1)).astype(mx.float16)
                continue
        value = read_tensor(data, info)
        tensors[info.name] = mx.array(value.astype(np.float32) if value.dtype == np.float64 else value)
    return tensors, meta, types
