"""The model hyper-parameters every architecture reads, whatever file format they came from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class ModelConfig:
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    # 0 = derive (all heads / hidden_size // heads); always set after __init__, so readers need no None check.
    num_key_value_heads: int = 0
    head_dim: int = 0
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    # Quantization as stored: {"group_size", "bits", "<layer path>": {...} overrides}; None = float.
    quantization: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.num_key_value_heads:
            self.num_key_value_heads = self.num_attention_heads
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: dict) -> "ModelConfig":
        """From a Hugging Face / mlx-community config.json; unknown keys are kept in `extra`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        if d.get("model_type") == "qwen2":
            kwargs.setdefault("attention_bias", True)
        if d.get("model_type") in ("gemma3", "gemma3_text"):
            kwargs.setdefault("tie_word_embeddings", True)  # Gemma's default; its configs often omit it
        if "quantization_config" in d and "quantization" not in d:
            # mlx-community files sometimes carry both; MLX's own block is `quantization`.
            q = d["quantization_config"]
            if isinstance(q, dict) and "bits" in q and "group_size" in q:
                kwargs["quantization"] = q
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    def to_hf_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if out["quantization"] is None:
            del out["quantization"]
        if out["rope_scaling"] is None:
            del out["rope_scaling"]
        out.update(self.extra)
        return out
