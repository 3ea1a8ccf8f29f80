"""A safetensors file's header checked before MLX reads the file.

MLX checks most of the header itself, but it multiplies shapes in 64 bits and keeps dimensions in 32:
a shape whose byte count overflows passes its check (a (2^32, 2^30) tensor read from zero bytes), and a
negative dimension can make it allocate without end. Here every entry is checked with Python integers.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from macllm.formats.names import shown

# The dtypes MLX reads (F64 and F8_E5M2 it refuses), with their sizes in bytes.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4,
               "I32": 4, "F32": 4, "U64": 8, "I64": 8, "C64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit
MAX_DIM = 2**31 - 1  # MLX shapes are 32-bit


class DamagedSafetensors(ValueError):
    """What is wrong with the header, in a few words (callers already turn ValueError into one line)."""


def check_safetensors(path: Path) -> None:
    """Raises DamagedSafetensors unless every tensor the header describes lies inside the file."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DamagedSafetensors("the file is shorter than its 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise DamagedSafetensors(f"its header length {n} runs past the end of the file")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise DamagedSafetensors("its header is not JSON") from None
    if not isinstance(header, dict):
        raise DamagedSafetensors("its header is not a JSON object")
    body = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":  # MLX writes null when there is none
            if entry is not None and not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise DamagedSafetensors("its __metadata__ is not a map of strings")
            continue
        _check_entry(name, entry, body)


def _is_int(value) -> bool:
    return type(value) is int  # JSON true/false are bools, which Python would take as 1/0


def _check_entry(key: str, entry, body: int) -> None:
    name = shown(key)
    if not isinstance(entry, dict):
        raise DamagedSafetensors(f"tensor {name} is not described by a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise DamagedSafetensors(f"tensor {name} has dtype {dtype!r}, which macllm cannot read")
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise DamagedSafetensors(f"tensor {name} has shape {shape!r} (expected a list of sizes up to {MAX_DIM})")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise DamagedSafetensors(f"tensor {name} has data offsets {offsets!r} (expected [begin, end])")
    if offsets[1] > body:
        raise DamagedSafetensors(f"tensor {name} runs past the end of the file")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise DamagedSafetensors(f"tensor {name}'s data offsets do not fit its shape {shape} of {dtype}")
