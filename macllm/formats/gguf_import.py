"""Import a GGUF whose tensor types MLX cannot read (k-quants, Q5_0, BF16, ...) into an MLX folder.

Types that are affine groups of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K) move across without
rounding: same codes, same scales, at 4, 5 or 8 bits (gguf_blocks). The others are dequantized with the
gguf package and re-quantized to MLX affine, group 32: 8 bits for tensors stored with 6 or more bits per
weight (Q6_K, F16, BF16), 4 bits below that (Q2_K, Q3_K, IQ types); norms stay float. The folder is cached
under models_dir()/.imported, keyed by the file's name, size and modification time and by this recipe's
version, so the slow part happens once per file.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from macllm.formats.gguf_dequant import check_types, read_dequantized, requantize_bits
from macllm.formats.gguf_header import read_header
from macllm.formats.gguf_model import (
    architecture,
    config_from_metadata,
    convert_tensors,
    hf_name,
    quantization_from_weights,
)
from macllm.formats.mlx_folder import save_mlx_folder
from macllm.paths import models_dir
from macllm.quant.weights import quantize_weights
from macllm.tokenizer import Tokenizer

GROUP_SIZE = 32
RECIPE = "v2"  # bump when the import changes, so stale cached folders are not reused


def import_cache_path(path: Path) -> Path:
    stat = Path(path).stat()
    return models_dir() / ".imported" / f"{Path(path).stem}-{stat.st_size}-{stat.st_mtime_ns}-{RECIPE}"


def imported_folder(path: Path, progress: bool = False) -> Path:
    """The cached MLX folder for `path`, importing it first if needed."""
    out = import_cache_path(path)
    if (out / "config.json").is_file():
        return out
    folder = import_gguf(path, out, progress)
    _remove_older_imports(out)
    return folder


def _remove_older_imports(current: Path) -> None:
    """Imports of the same file by an earlier recipe are dead weight (hundreds of MB): remove them."""
    stem = current.name[: -len(RECIPE) - 1]
    for old in current.parent.glob(f"{stem}*"):
        if old != current and old.is_dir() and (old.name == stem or old.name.startswith(stem + "-v")):
            shutil.rmtree(old, ignore_errors=True)


def check_importable(path: Path):
    """Everything that can be wrong, found from the header alone (fast); returns the tokenizer."""
    meta, infos = read_header(Path(path))
    config_from_metadata(meta, {})  # architecture and sizes
    check_types(infos, Path(path))
    return Tokenizer.from_gguf_metadata(meta)


def import_gguf(path: Path, out: Path, progress: bool = False) -> Path:
    tokenizer = check_importable(path)
    if progress:
        print(f"Importing {Path(path).name} (once; later loads read the cached copy)…", file=sys.stderr)
    raw, meta, types = read_dequantized(Path(path), keep_exact=True)
    cfg, weights, _, _ = convert_tensors(raw, meta, Path(path).name)
    arch = architecture(meta)  # names, q/k row order; triples carried as they are
    bits = {}
    for name, type_id in types.items():
        target = hf_name(name, arch)
        if target and target.endswith(".weight") and weights[target].ndim in (2, 3) \
                and target[: -len(".weight")] + ".scales" not in weights:
            bits[target[: -len(".weight")]] = requantize_bits(type_id)
    weights, _ = quantize_weights(weights, 4, GROUP_SIZE, bits_of=bits.get)  # stacked experts too, each in its rows
    cfg.quantization = quantization_from_weights(weights)  # every matrix is now group 32, at its own bits
    return save_mlx_folder(cfg, weights, tokenizer, out, overwrite=True)
