"""Import a GGUF whose tensor types MLX cannot read (k-quants, Q5_0, BF16, ...) into an MLX folder.

Tensors are dequantized with the gguf package and re-quantized to MLX affine 4-bit, group 32 (8-bit for
tensors stored with 6 or more bits per weight, F16/BF16 included; norms stay float). The folder is cached under
models_dir()/.imported, keyed by the file's name, size and modification time, so the slow part happens
once per file.
"""

from __future__ import annotations

from pathlib import Path

from macllm.formats.gguf_model import convert_tensors, hf_name
from macllm.paths import models_dir

GROUP_SIZE = 32


def import_cache_path(path: Path) -> Path:
    stat = Path(path).stat()
    return models_dir() / ".imported" / f"{Path(path).stem}-{stat.st_size}-{stat.st_mtime_ns}"


def imported_folder(path: Path, progress: bool = False) -> Path:
    """The cached MLX folder for `path`, importing it first if needed."""
    out = import_cache_path(path)
    if (out / "config.json").is_file():
        return out
    return import_gguf(path, out, progress)


def check_importable(path: Path):
    """Everything that can be wrong, found from the header alone (fast); returns the tokenizer."""
    from macllm.formats.gguf_dequant import check_types
    from macllm.formats.gguf_header import read_header
    from macllm.formats.gguf_model import config_from_metadata
    from macllm.tokenizer import Tokenizer

    meta, infos = read_header(Path(path))
    config_from_metadata(meta, {})  # architecture and sizes
    check_types(infos, Path(path))
    return Tokenizer.from_gguf_metadata(meta)


def import_gguf(path: Path, out: Path, progress: bool = False) -> Path:
    import sys

    from macllm.formats.gguf_dequant import read_dequantized, requantize_bits
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.quantize import quantize_weights

    tokenizer = check_importable(path)
    if progress:
        print(f"Importing {Path(path).name} (dequantizing and re-quantizing once)…", file=sys.stderr)
    raw, meta, types = read_dequantized(Path(path))
    arch = meta.get("general.architecture")
    cfg, weights, _, _ = convert_tensors(raw, meta)
    bits = {}
    for name, type_id in types.items():
        target = hf_name(name, arch)
        if target and target.endswith(".weight") and weights[target].ndim == 2:
            bits[target[: -len(".weight")]] = requantize_bits(type_id)
    common = max(set(bits.values()), key=list(bits.values()).count) if bits else 4
    # Matrices stored as floats (F16, BF16) count as high precision: 8 bits. Norms stay float.
    weights, quant = quantize_weights(weights, common, GROUP_SIZE, bits_of=bits.get)
    cfg.quantization = quant if bits else None
    return save_mlx_folder(cfg, weights, tokenizer, out, overwrite=True)
