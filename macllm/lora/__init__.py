"""Live LoRA adapters: layers with swappable slots, mlx-lm / PEFT formats, the adapter store, fusing.

The re-exports load on first use (PEP 562), so the CLI can check adapter weights (`weight_bounds`) while it
parses options without importing MLX."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from macllm.lora.adapter import Adapter
    from macllm.lora.manager import AdapterManager

_EXPORTS = {"Adapter": "macllm.lora.adapter", "AdapterManager": "macllm.lora.manager"}

__all__ = ["Adapter", "AdapterManager"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'macllm.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
