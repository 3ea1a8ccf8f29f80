"""What `macllm models` lists: every catalog model (pulled or not), whatever else sits in models_dir(), and the
models in the Hugging Face cache (by repo id, which is how `--model` names them)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from macllm.errors import MacllmError
from macllm.formats.gguf_file import read_gguf_metadata_only
from macllm.hub.catalog import CATALOG, CatalogEntry
from macllm.hub.folder import model_in_folder
from macllm.hub.huggingface import hf_cached_models
from macllm.hub.wheels import VERIFIED_SUFFIX, catalog_path
from macllm.models.implementation import implementation
from macllm.paths import models_dir


def local_models() -> list[dict]:
    """Every catalog model (pulled or not), whatever else sits in models_dir(), and the Hugging Face cache's models.

    Keys: name, description, path, pulled, size_bytes (on disk), architecture, implementation ("own",
    "mlx-lm"), params, quantization, source ("catalog", "local" or "hf"). Unknown facts are None.
    """
    root = models_dir()
    rows = [_catalog_row(entry) for entry in CATALOG.values()]
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or child.name in CATALOG or child.name.endswith(VERIFIED_SUFFIX):
            continue
        row = _local_row(child)
        if row is not None:
            rows.append(row)
    rows += [_found_row(repo_id, model, size, "hf") for repo_id, model, size in hf_cached_models()]
    return rows


def _catalog_row(entry: CatalogEntry) -> dict:
    path = catalog_path(entry)
    pulled = path.is_dir() if entry.is_folder else path.is_file()
    return {
        "name": entry.name,
        "description": entry.description,
        "path": str(path),
        "pulled": pulled,
        "size_bytes": _size_on_disk(path) if pulled else 0,
        "architecture": entry.architecture,
        "implementation": implementation(entry.architecture),
        "params": entry.params_label,
        "quantization": entry.quantization,
        "source": "catalog",
    }


def _local_row(child: Path) -> dict | None:
    try:
        if child.is_dir():
            model = model_in_folder(child)
        elif child.suffix.lower() == ".gguf":
            model = child
        else:
            return None
    except MacllmError:
        return None  # not a model folder: not ours to list
    return _found_row(child.stem if child.is_file() else child.name, model, _size_on_disk(child), "local")


def _found_row(name: str, model: Path, size: int, source: str) -> dict:
    """A model found on disk (not from the catalog): its facts read from its own metadata."""
    architecture, params, quantization = _describe(model)
    return {
        "name": name,
        "description": "",
        "path": str(model),
        "pulled": True,
        "size_bytes": size,
        "architecture": architecture,
        "implementation": implementation(architecture),
        "params": params,
        "quantization": quantization,
        "source": source,
    }


def _describe(model: Path) -> tuple[str | None, str | None, str | None]:
    """(architecture, params, quantization) from the model's own metadata; best-effort."""
    try:
        return _gguf_facts(model) if model.is_file() else _config_facts(model / "config.json")
    except Exception:  # a damaged or odd file must not break the listing
        return None, None, None


def _gguf_facts(path: Path) -> tuple[str | None, str | None, str | None]:
    meta = read_gguf_metadata_only(path)
    quantization = None
    if "general.file_type" in meta:
        try:
            quantization = gguf.LlamaFileType(int(meta["general.file_type"])).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    params = meta.get("general.size_label") or _params_label(meta.get("general.parameter_count"))
    return meta.get("general.architecture"), params, quantization


def _config_facts(path: Path) -> tuple[str | None, str | None, str | None]:
    config = json.loads(path.read_text())
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    quantization = f"{bits}-bit" if bits else config.get("torch_dtype")
    return config.get("model_type"), None, quantization


def _params_label(count) -> str | None:
    if not count:
        return None
    count = int(count)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g}{suffix}"
    return str(count)


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():  # follows HF-style symlinks to blobs
                total += item.stat().st_size
        except OSError:
            pass
    return total
