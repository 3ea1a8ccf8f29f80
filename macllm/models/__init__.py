"""Architectures by name. Each module defines `Model(config)` with mlx-lm compatible parameter names; any
other `model_type` mlx-lm knows runs on mlx-lm's own class (`mlx_lm_family`)."""

from __future__ import annotations

from macllm.errors import MacllmError
from macllm.models import gemma3, llama, phi3, qwen3, qwen3_moe, smollm3
from macllm.models.implementation import MLX_LM_LABEL, implementation

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma3", "phi3", "smollm3")


def model_class(model_type: str):
    """A callable (config, rope_periods) -> model for this architecture."""
    if model_type in ("llama", "mistral", "qwen2"):
        return llama.Model
    if model_type == "qwen3":
        return qwen3.Model
    if model_type == "qwen3_moe":
        return qwen3_moe.Model
    if model_type in ("gemma3", "gemma3_text"):
        return gemma3.Model
    if model_type == "phi3":
        return phi3.Model
    if model_type == "smollm3":
        return smollm3.Model
    if implementation(model_type) == MLX_LM_LABEL:
        # Imported here for start-up time: mlx-lm imports transformers (~2 s); only its models pay that.
        from macllm.models import mlx_lm_family

        return mlx_lm_family.build
    raise MacllmError(
        f"unsupported model architecture '{model_type}' (ours: {', '.join(SUPPORTED)}; "
        "mlx-lm's model classes run the others it knows, and it does not know this one)"
    )
