"""Which files hold a model folder's weights: those its shard index names, or every *.safetensors.

A downloaded folder is untrusted input: its index may name any path (`../../secret.safetensors`, an absolute
one) and a weight file may be a symlink. Every weight file must lie inside the folder once symlinks are
resolved; a Hugging Face cache snapshot may also link into its own repository's cache entry (blobs/), which
is how that cache stores every file.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from macllm.errors import MacllmError

INDEX_NAME = "model.safetensors.index.json"


def weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.exists():
        files = [_shard_path(folder, name, index) for name in sorted(set(read_weight_map(index).values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise MacllmError(f"{folder} is missing weight shard(s) {', '.join(missing)}; download it again")
    else:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise MacllmError(f"{folder} has no *.safetensors weights")
    root = _own_root(folder)
    for file in files:
        target = file.resolve()
        if not target.is_relative_to(root):
            raise MacllmError(f"{file.name} in {folder} leads to {target}, outside the model folder; "
                              "refusing to read it")
    return files


def read_weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file name, as the index says; anything else is one line."""
    try:
        raw = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raw = None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise MacllmError(f"{index} is damaged (its weight_map is not a map of tensor names to shard files); "
                          "download the model again")
    return weight_map


def _shard_path(folder: Path, name: str, index: Path) -> Path:
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise MacllmError(f"{index} names shard {name!r}, outside the model folder; refusing to read it")
    return folder / relative


def _own_root(folder: Path) -> Path:
    """The folder, or for a Hugging Face cache snapshot (<repo>/snapshots/<revision>) the repo's cache entry."""
    folder = folder.resolve()
    return folder.parent.parent if folder.parent.name == "snapshots" else folder
