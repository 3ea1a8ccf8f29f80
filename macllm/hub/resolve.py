"""Model sources -> local files: a .gguf path, a model folder, a catalog name or a Hugging Face repo id."""

from __future__ import annotations

import os
import re
from pathlib import Path

from macllm.errors import MacllmError
from macllm.hub.catalog import CATALOG
from macllm.hub.folder import model_in_folder
from macllm.hub.huggingface import from_hugging_face
from macllm.hub.wheels import pull
from macllm.paths import models_dir

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
_NOT_FOUND_HINT = (
    "expected a .gguf file, a model folder, a catalog name (see `macllm models`) or a Hugging Face repo id"
)


def resolve_model(source: str, progress: bool = True) -> Path:
    """A local `.gguf` file or model folder for `source`, downloading it first if needed."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise MacllmError(f"{source} is not a .gguf file; pass a .gguf file or a model folder")
        return path.resolve()
    if path.is_dir():
        return model_in_folder(path.resolve())
    if source in CATALOG:
        return pull(source, progress)
    cached = _in_models_dir(source)
    if cached is not None:
        return cached
    if _REPO_ID.fullmatch(source) and not source.lower().endswith(".gguf"):
        return from_hugging_face(source, progress)
    if os.sep in source or source.lower().endswith(".gguf"):
        raise MacllmError(f"model file not found: {source}")
    raise MacllmError(f"model not found: {source} ({_NOT_FOUND_HINT})")


def _in_models_dir(name: str) -> Path | None:
    """Models a user dropped into models_dir() are usable by name, as `macllm models` lists them."""
    if not _PLAIN_NAME.fullmatch(name):
        return None
    for candidate in (models_dir() / name, models_dir() / f"{name}.gguf"):
        if candidate.exists():
            return resolve_model(str(candidate))
    return None
