"""What a prompt-cache file is valid for: the model (its weights' files, shapes and how it computes), the
active adapter blend (names, weights and a digest of each adapter's arrays), the KV bits and the format
version. Two runs share a file only when all of these are equal; the file name starts with the key's hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlx.core as mx

from macllm.prompt_cache.cache_file import VERSION


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _files(path: Path) -> list[list]:
    """Name, size and modification time of the model's file, or of the files directly in its folder: a
    changed or re-downloaded model is another model."""
    try:
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    except OSError:
        return []


def model_fingerprint(info, shapes: str) -> str:
    """`info`: the loaded model's ModelInfo; `shapes`: its LoRA fingerprint (architecture and sizes)."""
    facts = {"shapes": shapes, "path": info.path, "files": _files(Path(info.path)), "compute": info.compute,
             "quantization": info.quantization, "implementation": info.implementation}
    return _digest(json.dumps(facts, sort_keys=True), 32)


def arrays_digest(named: Mapping[str, Sequence[mx.array]]) -> str:
    """A digest of an adapter's arrays (a retrained adapter under the same name is another blend)."""
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(name.encode())
        for a in named[name]:
            mx.eval(a)
            raw = a.view(mx.uint16) if a.dtype == mx.bfloat16 else a  # no buffer format for bfloat16
            h.update(str(a.shape).encode())
            h.update(bytes(memoryview(raw)))  # type: ignore[arg-type]  # MLX arrays are buffers
    return h.hexdigest()[:32]


def make_key(model: str, adapters: list[list], kv_bits: int | None) -> dict:
    """`adapters`: [name, user weight, digest] for each active adapter."""
    return {"version": VERSION, "model": model, "adapters": sorted(adapters), "kv_bits": kv_bits}


def key_hash(key: dict) -> str:
    return _digest(json.dumps(key, sort_keys=True))


def head_hash(tokens: list[int]) -> str:
    return _digest(",".join(map(str, tokens)), 12)
