"""Safetensors files of named arrays: `mx.load` narrowed to what they hold (its declared return is a union),
and `mx.save_safetensors` with a failed write raised as the OSError it is."""

from __future__ import annotations

import errno
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


def save_arrays(path: Path | str, tensors: dict[str, mx.array], metadata: dict[str, str] | None = None) -> None:
    """mx.save_safetensors; a failed write (a full disk) is an OSError, which the atomic writers turn into a
    one-line error: MLX raises RuntimeError."""
    try:
        mx.save_safetensors(str(path), tensors, metadata=metadata)
    except RuntimeError as e:
        raise OSError(errno.EIO, str(e).splitlines()[0] if str(e) else "write failed", str(path)) from None
