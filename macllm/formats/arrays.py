"""`mx.load` narrowed to what safetensors files hold: named arrays (its declared return is a union)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from macllm.formats.safetensors_header import check_safetensors


def load_arrays(path: Path | str) -> dict[str, mx.array]:
    """The file's tensors by name; ValueError when its header does not describe the file (MLX would trust
    it) or it holds a single unnamed array (a .npy)."""
    check_safetensors(Path(path))
    loaded = mx.load(str(path))
    if not isinstance(loaded, dict):
        raise ValueError(f"{Path(path).name} holds no named tensors")
    return loaded
