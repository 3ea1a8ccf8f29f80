"""Architectures by name. Each module defines `Model(config)` with mlx-lm compatible parameter names."""

from __future__ import annotations

from macllm.errors import MacllmError
from macllm.models import gemma3, llama, qwen3, qwen3_moe

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma3")


def model_class(model_type: str):
    if model_type in ("llama", "mistral", "qwen2"):
        return llama.Model
    if model_type == "qwen3":
        return qwen3.Model
    if model_type == "qwen3_moe":
        return qwen3_moe.Model
    if model_type in ("gemma3", "gemma3_text"):
        return gemma3.Model
    raise MacllmError(
        f"unsupported model architecture '{model_type}' (supported: {', '.join(SUPPORTED)})"
    )
