"""EmbeddingGemma's encoder: our Gemma 3 text body run with bidirectional attention (models/gemma3.py).

sentence-transformers' EmbeddingGemma folder is this body (model.safetensors, config.json with
`use_bidirectional_attention`), then mean pooling and two bias-free dense projections (768 -> 3072 -> 768),
which the Embedder applies from the folder's modules.json like any other sentence-transformers model.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.formats.arrays import load_arrays
from macllm.models.gemma3 import Gemma3Body, gemma_settings

MODEL_TYPES = ("gemma3_text", "gemma3")
_PREFIX = "model."  # a checkpoint saved from a wrapper names the body's tensors model.*


class GemmaEncoder:
    """(ids (B, L) int32, mask (B, L) float 1/0) -> hidden states (B, L, hidden)."""

    def __init__(self, model_dir: Path, config: dict, weights_file: Path):
        if not config.get("use_bidirectional_attention"):
            raise MacllmError(f"{model_dir} is a causal Gemma 3 (a chat model); embeddings need EmbeddingGemma, "
                              "whose config.json sets use_bidirectional_attention")
        cfg = ModelConfig.from_hf_dict(config)
        self.body = Gemma3Body(cfg, gemma_settings(cfg))
        weights = {name.removeprefix(_PREFIX): value for name, value in load_arrays(weights_file).items()}
        try:
            self.body.load_weights(list(weights.items()), strict=True)
        except ValueError as e:
            raise MacllmError(f"{weights_file} does not fit a Gemma 3 encoder: {str(e).splitlines()[0]}") from None
        self.body.eval()
        mx.eval(self.body.parameters())
        self.hidden_size = cfg.hidden_size
        self.max_positions = cfg.max_position_embeddings

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        return self.body.encode(ids, mask > 0)
