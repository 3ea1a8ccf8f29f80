"""The model hyper-parameters every architecture reads, whatever file format they came from."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from macllm.errors import MacllmError


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
        rope = d.get("rope_parameters")
        if isinstance(rope, dict):
            # transformers >= 5 nests rope_theta (and the scaling) under rope_parameters.
            if "rope_theta" not in kwargs and rope.get("rope_theta") is not None:
                kwargs["rope_theta"] = rope["rope_theta"]
            if "rope_scaling" not in kwargs and rope.get("rope_type", "default") != "default":
                kwargs["rope_scaling"] = rope
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


@dataclass(frozen=True)
class MoEArgs:
    """Qwen3-MoE's mixture-of-experts settings (kept in ModelConfig.extra), with mlx-lm's meaning."""

    num_experts: int
    num_experts_per_tok: int  # top-k experts each token is routed to
    moe_intermediate_size: int  # each expert's hidden width
    decoder_sparse_step: int = 1  # layer i is sparse when (i + 1) % step == 0 ...
    mlp_only_layers: tuple[int, ...] = ()  # ... and i is not listed here
    norm_topk_prob: bool = False  # renormalise the top-k router weights to sum to 1

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "MoEArgs":
        e = cfg.extra
        missing = [k for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size") if e.get(k) is None]
        if missing:
            raise MacllmError(f"config.json of this {cfg.model_type} model lacks {', '.join(missing)}")
        try:
            args = cls(num_experts=int(e["num_experts"]), num_experts_per_tok=int(e["num_experts_per_tok"]),
                       moe_intermediate_size=int(e["moe_intermediate_size"]),
                       decoder_sparse_step=int(e.get("decoder_sparse_step") or 1),
                       mlp_only_layers=tuple(int(i) for i in e.get("mlp_only_layers") or ()),
                       norm_topk_prob=bool(e.get("norm_topk_prob", False)))
        except (TypeError, ValueError):
            raise MacllmError(f"config.json of this {cfg.model_type} model has non-integer expert settings") from None
        if not 0 < args.num_experts_per_tok <= args.num_experts or args.moe_intermediate_size < 1 \
                or args.decoder_sparse_step < 1:
            raise MacllmError(f"config.json of this {cfg.model_type} model has impossible expert settings "
                              f"({args.num_experts_per_tok} of {args.num_experts} experts per token, "
                              f"width {args.moe_intermediate_size}, sparse step {args.decoder_sparse_step})")
        return args

    def is_sparse(self, layer: int) -> bool:
        return (self.num_experts > 0 and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)
