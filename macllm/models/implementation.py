"""Which implementation runs a `model_type`: ours ("own"), mlx-lm's model classes ("mlx-lm"), or none.

A leaf without MLX: `macllm models` and the readers ask it before anything heavy is imported. mlx-lm's
models folder is found without importing mlx_lm (its package imports transformers, seconds of start-up).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

OWN = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma3", "gemma3_text")
OWN_LABEL, MLX_LM_LABEL = "own", "mlx-lm"
# mlx-lm files that are helpers, not architectures (see mlx_lm/models/).
_NOT_ARCHITECTURES = {"__init__", "base", "cache", "activations", "rope_utils", "switch_layers", "pipeline",
                      "bitlinear_layers", "gated_delta", "mla", "ssm"}


@cache
def mlx_lm_models_dir() -> Path | None:
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "models"
    return folder if folder.is_dir() else None


def mlx_lm_architectures() -> list[str]:
    folder = mlx_lm_models_dir()
    if folder is None:
        return []
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in _NOT_ARCHITECTURES)


def implementation(model_type: str | None) -> str | None:
    """"own", "mlx-lm", or None when neither knows the architecture."""
    if not isinstance(model_type, str) or not model_type:
        return None
    if model_type in OWN:
        return OWN_LABEL
    folder = mlx_lm_models_dir()
    if folder is not None and model_type not in _NOT_ARCHITECTURES and "/" not in model_type \
            and (folder / f"{model_type}.py").is_file():
        return MLX_LM_LABEL
    return None
