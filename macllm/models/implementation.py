"""Which implementation runs a `model_type`: ours ("own"), mlx-lm's model classes ("mlx-lm"), or none.

A leaf without MLX: `macllm models` and the readers ask it before anything heavy is imported. mlx-lm's
models folder is found without importing mlx_lm (its package imports transformers, seconds of start-up), and
its model-type aliases (`falcon_mamba` -> `mamba`) are read from the source text of mlx_lm/utils.py.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

OWN = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma3", "gemma3_text", "phi3", "smollm3")
OWN_LABEL, MLX_LM_LABEL = "own", "mlx-lm"
# mlx-lm files that are helpers, not architectures (see mlx_lm/models/).
_NOT_ARCHITECTURES = {"__init__", "base", "cache", "activations", "rope_utils", "switch_layers", "pipeline",
                      "bitlinear_layers", "gated_delta", "mla", "ssm"}
_REMAPPING_NAME = "MODEL_REMAPPING"  # mlx_lm.utils: model_type -> the module that implements it


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


@cache
def mlx_lm_aliases() -> dict[str, str]:
    """mlx-lm's MODEL_REMAPPING (alias -> module name), read from its source without running it; {} when
    mlx-lm is absent or the dict is not a plain literal of strings (a later mlx-lm may change it)."""
    folder = mlx_lm_models_dir()
    if folder is None:
        return {}
    try:
        tree = ast.parse((folder.parent / "utils.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value_node = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value_node = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == _REMAPPING_NAME for t in targets):
            try:
                value = ast.literal_eval(value_node)
            except ValueError:
                return {}
            if isinstance(value, dict):
                return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
    return {}


def _is_mlx_lm_module(name: str) -> bool:
    folder = mlx_lm_models_dir()
    return folder is not None and name not in _NOT_ARCHITECTURES and name.isidentifier() \
        and (folder / f"{name}.py").is_file()


def implementation(model_type: str | None) -> str | None:
    """"own", "mlx-lm", or None when neither knows the architecture. An mlx-lm alias whose target is one of
    ours (`xverse` -> `llama`) still runs on mlx-lm's class: only mlx-lm knows what the alias's config means."""
    if not isinstance(model_type, str) or not model_type:
        return None
    if model_type in OWN:
        return OWN_LABEL
    if _is_mlx_lm_module(model_type) or _is_mlx_lm_module(mlx_lm_aliases().get(model_type, "")):
        return MLX_LM_LABEL
    return None
