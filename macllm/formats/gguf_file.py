"""Reading a GGUF file: tensors through MLX's native loader, metadata as plain Python values.

MLX's loader trusts the file's header (a crafted one crashes the process), so our own reader checks the
whole header first (gguf_header).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from macllm.errors import MacllmError
from macllm.formats.gguf_header import read_header

GGUF_MAGIC = b"GGUF"


def _plain(value):
    """MLX returns scalar and array metadata as mx.array; convert to Python/numpy."""
    if isinstance(value, mx.array):
        if value.ndim == 0:
            return value.item()
        return np.array(value)
    return value


def check_gguf_header(path: Path) -> None:
    if not path.exists():
        raise MacllmError(f"model file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise MacllmError(f"{path} is not a GGUF file (bad magic bytes); pass a .gguf file or a model folder")


def read_gguf_metadata_only(path: Path) -> dict:
    """Metadata without materialising tensors (numeric arrays as numpy arrays)."""
    check_gguf_header(path)
    return read_header(path)[0]


def read_gguf(path: Path, header_checked: bool = False) -> tuple[dict[str, mx.array], dict]:
    """Tensors (quantized ones split into weight/scales/biases by MLX) and metadata. `header_checked`:
    the caller has just read the whole header with `read_header` (it costs ~0.1 s on a 49k vocabulary)."""
    path = Path(path)
    if not header_checked:
        check_gguf_header(path)
        read_header(path)  # a header MLX cannot safely read is refused here, in one line
    try:
        loaded = mx.load(str(path), return_metadata=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "type" in msg.lower() and "support" in msg.lower():
            raise MacllmError(f"{path.name}: {msg}") from None
        raise MacllmError(f"cannot read {path.name} as GGUF ({msg}); the file may be truncated or damaged, "
                          "download it again") from None
    if not isinstance(loaded, tuple):  # mx.load's return type is a union; with metadata it is a pair
        raise MacllmError(f"cannot read {path.name} as GGUF: it holds no named tensors")
    weights, metadata = loaded
    return weights, {k: _plain(v) for k, v in metadata.items()}
