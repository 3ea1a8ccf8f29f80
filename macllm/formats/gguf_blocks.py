"""GGUF quantized tensors read straight into MLX's affine layout, without any rounding.

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q5_K all store groups of 32 weights as w = scale * code + bias with
integer codes, which is exactly what MLX's affine quantization stores (4, 5 or 8 bits, group 32). Their
block layouts differ, so rather than decoding each layout's bit fields by hand, the gguf package's own
dequantizer is asked twice per tensor: once with every code byte set to 0x00 and once to 0xFF. Those two
probes give each group's bias and scale; the codes follow from the real values. The result is checked
against the real values, so a layout this assumption does not fit is refused, never silently mangled.
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from macllm.quant.affine import pack_codes

GROUP_SIZE = 32


@dataclass(frozen=True)
class CodeLayout:
    header_bytes: int  # per block: scales, mins and the like; the code bytes follow
    bits: int  # MLX bits that hold the codes exactly
    code_if_zero: int  # the code a group's weights get when every code byte is 0x00
    code_if_ones: int  # ... and when every code byte is 0xFF


# Q8_0 codes are signed bytes: 0x00 is 0 (code 128 once shifted to 0..255), 0xFF is -1 (code 127).
LAYOUTS = {
    "Q4_0": CodeLayout(2, 4, 0, 15),
    "Q4_1": CodeLayout(4, 4, 0, 15),
    "Q5_0": CodeLayout(2, 5, 0, 31),
    "Q5_1": CodeLayout(4, 5, 0, 31),
    "Q8_0": CodeLayout(2, 8, 128, 127),
    "Q4_K": CodeLayout(16, 4, 0, 15),
    "Q5_K": CodeLayout(16, 5, 0, 31),
}


def exact_bits(type_name: str) -> int | None:
    """MLX bits that hold this GGUF type without loss (group 32), or None."""
    layout = LAYOUTS.get(type_name)
    return layout.bits if layout else None


def read_exact(rows_bytes: np.ndarray, type_name: str, shape: tuple[int, ...]):
    """(packed uint32, scales float32, biases float32, bits) for a 2-D tensor of an exact type, or None if
    the values do not fit the affine layout (then the caller re-quantizes)."""
    if type_name == "Q8_0":
        return _read_q8_0(rows_bytes, shape)
    layout = LAYOUTS[type_name]
    qtype = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = np.ascontiguousarray(rows_bytes).reshape(-1, size)
    values = gguf.quants.dequantize(blocks, qtype).reshape(-1, GROUP_SIZE)

    def probe(byte: int) -> np.ndarray:
        fake = blocks.copy()
        fake[:, layout.header_bytes:] = byte
        return gguf.quants.dequantize(fake, qtype).reshape(-1, GROUP_SIZE)

    at_zero, at_ones = probe(0x00), probe(0xFF)
    if not (np.all(at_zero == at_zero[:, :1]) and np.all(at_ones == at_ones[:, :1])):
        return None  # the probes are not constant per group of 32: not the layout assumed
    scale = (at_ones[:, 0] - at_zero[:, 0]) / (layout.code_if_ones - layout.code_if_zero)
    bias = at_zero[:, 0] - layout.code_if_zero * scale
    safe = np.where(scale == 0, 1.0, scale)
    codes = np.clip(np.rint((values - bias[:, None]) / safe[:, None]), 0, (1 << layout.bits) - 1)
    rebuilt = codes * scale[:, None] + bias[:, None]
    if not np.allclose(rebuilt, values, rtol=1e-5, atol=1e-6 * max(float(np.abs(values).max()), 1e-30)):
        return None
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    packed = pack_codes(codes.astype(np.uint32).reshape(rows, cols), layout.bits)
    groups = (rows, cols // GROUP_SIZE)
    return packed, scale.astype(np.float32).reshape(groups), bias.astype(np.float32).reshape(groups), layout.bits


def _read_q8_0(rows_bytes: np.ndarray, shape: tuple[int, ...]):
    """Q8_0 is simple and often the largest tensor (embeddings): read it directly. A block is a float16
    scale d and 32 signed bytes q; w = d * q = d * (q + 128) - 128 * d."""
    blocks = np.ascontiguousarray(rows_bytes).reshape(-1, 2 + GROUP_SIZE)
    d = blocks[:, :2].copy().view(np.float16)[:, 0].astype(np.float32)
    codes = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    groups = (rows, cols // GROUP_SIZE)
    return pack_codes(codes.reshape(rows, cols), 8), d.reshape(groups), (-128 * d).reshape(groups), 8
