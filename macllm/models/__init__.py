"""Architectures by name. Each module defines `Model(config)` with mlx-lm compatible parameter names."""

from __future__ import annotations

from macllm.errors import MacllmError
from macllm.models import gemma3, llama

SUPPORTED = ("llama", "mistral", "qwen2", "gemma3")


def model_class(model_type: str):
    if model_type in ("llama", "mistral", "qwen2"):
        return llama.Model
    if model_type in ("gemma3", "gemma3_text"):
        return gemma3.Model
    raise MacllmError(
        f"unsupported model architecture '{model_type}' (supported: {', '.join(SUPPORTED)})"
    )
