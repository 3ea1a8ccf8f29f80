"""Hostile model files: a valid GGUF or safetensors file with one header field overwritten, or cut short.

`gguf_fields` walks a GGUF header independently of macllm's reader and records where every count, length,
dimension, type and offset sits, so a test can overwrite exactly one of them (2^62 tensors, 2^31 dims, ...).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Field:
    kind: str  # "n_tensors", "n_kv", "key_length", "value_type", "string_length", "array_type", "array_count",
    # "name_length", "n_dims", "dim", "tensor_type", "tensor_offset", "value:<key>" (unsigned scalars)
    pos: int
    size: int  # bytes: 4 or 8, little-endian unsigned

    def write(self, data: bytes, value: int) -> bytes:
        fmt = "<I" if self.size == 4 else "<Q"
        return data[: self.pos] + struct.pack(fmt, value % (1 << (8 * self.size))) + data[self.pos + self.size:]

    def read(self, data: bytes) -> int:
        return struct.unpack_from("<I" if self.size == 4 else "<Q", data, self.pos)[0]


def gguf_fields(data: bytes) -> tuple[list[Field], int]:
    """Every structural field of the header, and where the header ends (before alignment padding)."""
    fields = [Field("n_tensors", 8, 8), Field("n_kv", 16, 8)]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(kind: str) -> str:
        nonlocal pos
        fields.append(Field(kind, pos, 8))
        n = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + n
        return data[pos - n:pos].decode("utf-8", errors="replace")

    def value(kind: int) -> None:
        nonlocal pos
        if kind == _STRING:
            string("string_length")
        elif kind == _ARRAY:
            fields.extend([Field("array_type", pos, 4), Field("array_count", pos + 4, 8)])
            item, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                value(item)
        else:
            pos += _SCALAR_SIZES[kind]

    for _ in range(n_kv):
        key = string("key_length")
        fields.append(Field("value_type", pos, 4))
        kind = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if kind in (4, 10):  # an unsigned scalar such as general.alignment: its value is a field too
            fields.append(Field(f"value:{key}", pos, _SCALAR_SIZES[kind]))
        value(kind)
    for _ in range(n_tensors):
        string("name_length")
        fields.append(Field("n_dims", pos, 4))
        n_dims = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        for i in range(n_dims):
            fields.append(Field("dim", pos + 8 * i, 8))
        pos += 8 * n_dims
        fields.extend([Field("tensor_type", pos, 4), Field("tensor_offset", pos + 4, 8)])
        pos += 12
    return fields, pos


def first(fields: list[Field], kind: str) -> Field:
    return next(f for f in fields if f.kind == kind)


def with_field(path: Path, out: Path, kind: str, value: int | None = None, delta: int = 0, index: int = 0) -> Path:
    """A copy of the GGUF at `path` with the index-th field of `kind` set to `value` (or its value + delta)."""
    data = path.read_bytes()
    field = [f for f in gguf_fields(data)[0] if f.kind == kind][index]
    out.write_bytes(field.write(data, field.read(data) + delta if value is None else value))
    return out


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """(header as JSON, tensor bytes) of a safetensors file."""
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_safetensors(out: Path, header: dict | bytes, body: bytes, length: int | None = None) -> Path:
    """A safetensors file from a header (JSON-encoded unless bytes already) and body; `length` overrides the
    8-byte header length."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + body)
    return out
