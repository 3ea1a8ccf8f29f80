"""One prompt-cache file: a safetensors file with the per-layer arrays of a KV cache and, in its metadata, the
format version, the key (model fingerprint, adapters, KV bits), the exact tokens and each layer's settings.

Written atomically (a hidden temporary sibling, fsync, rename), 0600. Read in two steps: `read_header` (cheap:
the metadata only, to pick the file whose tokens share the longest prefix with a prompt) and `load_layers`,
which checks every tensor's name, shape and dtype against what the model's own cache holds before MLX reads
the data. Anything that does not fit raises `UnusableFile` with a short reason; the caller says it in one line.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from macllm.formats.arrays import save_arrays
from macllm.formats.safetensors_header import DamagedSafetensors, check_safetensors
from macllm.prompt_cache import layers

FORMAT = "macllm-prompt-cache"
VERSION = "1"
SUFFIX = ".safetensors"
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "U32": "uint32"}


class UnusableFile(ValueError):
    """Why a file is not used, in a few words."""


@dataclass
class Header:
    path: Path
    key: dict
    model: str  # what the user called the model, for `macllm cache list`
    tokens: list[int]
    layers: list[dict]
    tensors: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)


def tensor_name(layer: int, index: int) -> str:
    return f"layer{layer}.{index}"


def write(path: Path, key: dict, model: str, tokens: list[int], snapshots: list[tuple[dict, list[mx.array]]]) -> None:
    """Write the file at `path` in one step; OSError when it cannot be written (the target is then untouched)."""
    arrays = {tensor_name(i, j): a for i, (_, held) in enumerate(snapshots) for j, a in enumerate(held)}
    metadata = {"format": FORMAT, "version": VERSION, "key": json.dumps(key, sort_keys=True), "model": model,
                "tokens": ",".join(map(str, tokens)), "layers": json.dumps([meta for meta, _ in snapshots])}
    # mkstemp: 0600 whatever the umask; the suffix stops MLX from appending its own.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        save_arrays(tmp, arrays, metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_header(path: Path) -> Header:
    """The file's metadata, checked for form (not yet against a model)."""
    try:
        check_safetensors(path)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            raw = json.loads(f.read(n))
    except DamagedSafetensors as e:
        raise UnusableFile(f"damaged or truncated ({e})") from None
    except (OSError, ValueError) as e:
        raise UnusableFile(f"unreadable ({e})") from None
    meta = raw.pop("__metadata__", None) or {}
    if meta.get("format") != FORMAT:
        raise UnusableFile("not a macllm prompt-cache file")
    if meta.get("version") != VERSION:
        raise UnusableFile(f"written by another version of macllm (format {meta.get('version')!r}, "
                           f"this one reads {VERSION})")
    try:
        key = json.loads(meta["key"])
        metas = json.loads(meta["layers"])
        tokens = [int(t) for t in meta["tokens"].split(",")] if meta["tokens"] else []
    except (KeyError, ValueError, TypeError, AttributeError):
        raise UnusableFile("its metadata is damaged") from None
    if not isinstance(key, dict) or not isinstance(metas, list) or not all(isinstance(m, dict) for m in metas):
        raise UnusableFile("its metadata is damaged")
    tensors = {}
    for name, entry in raw.items():
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise UnusableFile(f"tensor {name} has dtype {entry['dtype']}, which no KV cache holds")
        tensors[name] = (tuple(entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]])
    return Header(path, key, str(meta.get("model", "?")), tokens, metas, tensors)


def check_against(header: Header, fresh: list, probe: list[list[tuple[tuple[int, ...], str]]],
                  vocab_size: int) -> None:
    """Raise UnusableFile unless the file holds exactly what `fresh` (the model's own new cache) would after its
    tokens: the same layer kinds and settings, every array of the shape and dtype `probe` says, and lengths that
    agree with the token count."""
    if len(header.layers) != len(fresh):
        raise UnusableFile(f"it has {len(header.layers)} layers, the model {len(fresh)}")
    if not header.tokens or any(not 0 <= t < vocab_size for t in header.tokens):
        raise UnusableFile("its tokens are not this model's")
    expected_names = set()
    for i, (meta, layer) in enumerate(zip(header.layers, fresh, strict=True)):
        want = layers.describe(layer)
        if {k: meta.get(k) for k in want} != want:
            raise UnusableFile(f"layer {i} is {_short(meta)}, the model's is {_short(want)}")
        kind = want["kind"]
        n = len(header.tokens)
        if kind == "sliding":
            start, offset = meta.get("start"), meta.get("offset")
            if type(start) is not int or type(offset) is not int or offset != n or not 0 <= start <= offset:
                raise UnusableFile(f"layer {i}'s window positions do not fit its {n} tokens")
            n = offset - start
        if kind == "mlx_lm.RotatingKVCache":
            n = _rotating_stored(i, meta, want, header.tensors.get(tensor_name(i, 0)), len(header.tokens))
        if kind == "quantized":
            quantizable = probe[i][0][0][3] % want["group_size"] == 0  # else the cache never switches
            if meta.get("mode") not in ("full", "quantized") or meta.get("dtype") != probe[i][0][1] or (
                    meta["mode"] == "quantized" and not quantizable):
                raise UnusableFile(f"layer {i}'s quantized state does not fit the model")
        wanted = layers.expected_arrays(meta, probe[i], n)
        for j, signature in enumerate(wanted):
            name = tensor_name(i, j)
            expected_names.add(name)
            if header.tensors.get(name) != signature:
                got = header.tensors.get(name)
                raise UnusableFile(f"tensor {name} is {got or 'missing'}, the model's cache holds {signature}")
    extra = set(header.tensors) - expected_names
    if extra:
        raise UnusableFile(f"it holds tensors the model has no place for ({sorted(extra)[0]})")


def _rotating_stored(i: int, meta: dict, want: dict, first: tuple | None, tokens: int) -> int:
    """How many positions an mlx-lm rotating layer stores, if its offset and write position fit its window."""
    offset, idx = meta.get("offset"), meta.get("idx")
    stored = first[0][2] if first is not None and len(first[0]) == 4 else -1
    window = want["max_size"]
    if (type(offset) is not int or type(idx) is not int or offset != tokens or not 0 <= idx <= stored
            or stored != min(offset, stored) or (offset <= window and stored != offset)
            or not 0 < stored <= window + layers.ROTATING_SLACK):
        raise UnusableFile(f"layer {i}'s ring buffer does not fit its {tokens} tokens and window of {window}")
    return stored


def _short(meta: dict) -> str:
    shown = ("kind", "window", "bits", "group_size", "threshold", "max_size", "keep")
    return " ".join(f"{k}={v}" for k, v in meta.items() if k in shown)


def load_layers(header: Header) -> list[tuple[dict, list[mx.array]]]:
    """The (meta, arrays) of every layer, read by MLX after `check_against` passed."""
    try:
        arrays = mx.load(str(header.path), format="safetensors")
    except (RuntimeError, ValueError, OSError) as e:  # changed under us since its header was read
        raise UnusableFile(f"unreadable ({' '.join(str(e).split())})") from None
    assert isinstance(arrays, dict)
    out = []
    for i, meta in enumerate(header.layers):
        held = []
        j = 0
        while tensor_name(i, j) in arrays:
            held.append(arrays[tensor_name(i, j)])
            j += 1
        if [layers.array_signature(a) for a in held] != [header.tensors[tensor_name(i, k)] for k in range(j)]:
            raise UnusableFile("it changed while it was read")
        out.append((meta, held))
    return out
