"""What a loaded model is: the module, its tokenizer and config, and the facts (ModelInfo) any thread may read.

Apart from the loader so that holding or describing a model does not import the loader's formats (GGUF,
numpy, the hub): the engine and the app import this at start-up, the loader only when a model loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.nn as nn

    from macllm.config import ModelConfig
    from macllm.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model, safe to read from any thread (frozen)."""

    source: str  # what the user asked for: a path, a catalog name or a repo id
    path: str  # the resolved file or folder
    architecture: str
    context_length: int
    parameters: int
    compute: str  # how it computes, e.g. "float32 (dequantized for the CPU fast path)"
    quantization: str  # of the stored weights, e.g. "4-bit g32" or "none"
    implementation: str = "own"  # whose model class computes it: "own" (macllm's) or "mlx-lm"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Tokenizer
    config: ModelConfig
    info: ModelInfo
