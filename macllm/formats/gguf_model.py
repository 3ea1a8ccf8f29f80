"""GGUF -> (ModelConfig, weights under mlx-lm / Hugging Face names, metadata)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlx.core as mx

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.formats.gguf_dequant import check_types, read_dequantized, type_name
from macllm.formats.gguf_file import read_gguf, read_gguf_metadata_only
from macllm.formats.gguf_header import read_header
from macllm.formats.gguf_sizes import check_sizes_fit_tensors
from macllm.formats.names import shown
from macllm.models import model_class

NATIVE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Gemma 3 names its norms differently: ffn_norm is the norm *before* the FFN, and there are post-norms.
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
# Qwen3 adds per-head q/k norms; Qwen3-MoE a router and each projection's experts stacked (experts, out, in),
# already mlx-lm's switch_mlp layout (llama.cpp's converter stacks Hugging Face's per-expert tensors so).
_QWEN3_LAYER_NAMES = {**_LAYER_NAMES, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_QWEN3MOE_LAYER_NAMES = {
    **_QWEN3_LAYER_NAMES,
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.switch_mlp.gate_proj",
    "ffn_up_exps": "mlp.switch_mlp.up_proj",
    "ffn_down_exps": "mlp.switch_mlp.down_proj",
}
# Phi-3 keeps q/k/v fused (attn_qkv) and gate+up fused in ffn_up (gate rows first, as Hugging Face's
# gate_up_proj; llama.cpp splits it in halves for SwiGLU). Separate attn_q/k/v are fused by phi3's sanitize.
_PHI3_LAYER_NAMES = {**_LAYER_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
_ARCH_LAYER_NAMES = {"gemma3": _GEMMA3_LAYER_NAMES, "qwen3": _QWEN3_LAYER_NAMES, "qwen3moe": _QWEN3MOE_LAYER_NAMES,
                     "phi3": _PHI3_LAYER_NAMES}
# llama.cpp's architecture name -> our model_type, where they differ.
_MODEL_TYPES = {"qwen3moe": "qwen3_moe"}
# llama.cpp's converter stores Gemma norm weights as 1 + w (its norm multiplies by the weight);
# Hugging Face and mlx-lm keep w and multiply by 1 + w.
_NORM_SHIFTED = {"gemma3"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias|scales|biases)$")
_TOP = re.compile(r"^([a-z_]+)\.(weight|bias|scales|biases)$")

# llama.cpp's converter permutes q/k rows of these architectures for its interleaved rope.
_PERMUTED_QK = {"llama", "mistral", "smollm3"}
# llama.cpp has no key for SmolLM3's NoPE layers: every 4th layer skips RoPE (hard-coded there).
_SMOLLM3_NO_ROPE_INTERVAL = 4


def hf_name(name: str, arch: str = "llama") -> str | None:
    m = _BLOCK.match(name)
    if m:
        layer, part, kind = m.groups()
        names = _ARCH_LAYER_NAMES.get(arch, _LAYER_NAMES)
        if part not in names:
            return None
        return f"model.layers.{layer}.{names[part]}.{kind}"
    m = _TOP.match(name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def unpermute_rows(x: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation so weights are in Hugging Face (half-split rope) order."""
    rows = x.shape[0]
    rest = x.shape[1:]
    return x.reshape(n_heads, rows // n_heads // 2, 2, *rest).swapaxes(1, 2).reshape(x.shape)


def architecture(meta: dict) -> str:
    arch = meta.get("general.architecture")
    if arch is None:
        raise MacllmError("GGUF has no general.architecture metadata; the file is not a model")
    if not isinstance(arch, str) or shown(arch) != arch:
        raise MacllmError(f"GGUF's general.architecture {shown(arch)} is not an architecture name; "
                          "the file is damaged")
    return arch


def config_from_metadata(meta: dict, weights: dict) -> ModelConfig:
    arch = architecture(meta)
    model_type = _MODEL_TYPES.get(arch, arch)
    model_class(model_type)  # raises a clear error for unsupported architectures

    def get(key: str, default: Any = None) -> Any:  # GGUF metadata values are whatever the file holds
        value = meta.get(f"{arch}.{key}", default)
        if key == "feed_forward_length" and value is None:
            # Qwen3-MoE files may name only the experts' width (every layer sparse).
            value = meta.get(f"{arch}.expert_feed_forward_length")
        return value

    n_heads = get("attention.head_count")
    hidden = get("embedding_length")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size") or None
    if vocab is None and tokens is not None:
        vocab = len(tokens)
    if vocab is None or None in (n_heads, hidden, get("block_count"), get("feed_forward_length")):
        raise MacllmError(f"GGUF is missing {arch} hyper-parameters (block_count, embedding_length, ...)")
    if min(int(n_heads), int(hidden), int(vocab), int(get("block_count")), int(get("feed_forward_length"))) < 1:
        raise MacllmError(f"GGUF has a zero or negative {arch} size (head_count, embedding_length, ...); "
                          "the file is damaged")
    rope_scaling = None
    if get("rope.scaling.type") == "linear" and get("rope.scaling.factor"):
        rope_scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    elif get("rope.scaling.type") == "yarn" and get("rope.scaling.factor"):
        rope_scaling = {"rope_type": "yarn", "factor": float(get("rope.scaling.factor"))}
        for ours, theirs in (("original_max_position_embeddings", "rope.scaling.original_context_length"),
                             ("beta_fast", "rope.scaling.yarn_beta_fast"),
                             ("beta_slow", "rope.scaling.yarn_beta_slow")):
            if get(theirs) is not None:
                rope_scaling[ours] = get(theirs)
    cfg = ModelConfig(
        model_type=model_type,
        hidden_size=int(hidden),
        num_hidden_layers=int(get("block_count")),
        intermediate_size=int(get("feed_forward_length")),
        num_attention_heads=int(n_heads),
        num_key_value_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=int(get("attention.key_length", hidden // n_heads)),
        vocab_size=int(vocab),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in weights,
        attention_bias=arch == "qwen2",
    )
    if arch == "gemma3":
        _gemma3_settings(cfg, get)
    if arch == "qwen3moe":
        _qwen3moe_settings(cfg, get, weights)
    if arch == "phi3":
        _phi3_settings(cfg, get, weights)
    if arch == "smollm3":
        cfg.extra["no_rope_layer_interval"] = _SMOLLM3_NO_ROPE_INTERVAL
    return cfg


def _phi3_settings(cfg: ModelConfig, get, weights: dict) -> None:
    """Partial rotary and LongRoPE as config.json says them: llama.cpp's converter stores the rotated width
    (rope.dimension_count), the factors as tensors (rope_factors_long/short), the training context and the
    attention factor it computed. Without tensors (a header-only check) the factors are not read."""
    rotated = get("rope.dimension_count")
    if rotated:
        cfg.extra["partial_rotary_factor"] = int(rotated) / (cfg.hidden_size // cfg.num_attention_heads)
    original = get("rope.scaling.original_context_length")
    if original:
        cfg.extra["original_max_position_embeddings"] = int(original)
    long, short = weights.get("rope_factors_long.weight"), weights.get("rope_factors_short.weight")
    if long is None:
        return
    scaling: dict = {"type": "longrope", "long_factor": long.astype(mx.float32).tolist(),
                     "short_factor": (short if short is not None else long).astype(mx.float32).tolist()}
    if get("rope.scaling.attn_factor") is not None:
        scaling["attention_factor"] = float(get("rope.scaling.attn_factor"))
    cfg.rope_scaling = scaling


def _qwen3moe_settings(cfg: ModelConfig, get, weights: dict) -> None:
    """The expert settings, as mlx-lm's config.json names them (MoEArgs checks them when the model is built)."""
    layers = range(cfg.num_hidden_layers)
    # GGUF has no decoder_sparse_step / mlp_only_layers: a layer is sparse when it holds a router. Without
    # tensors (a header-only check) every layer is, as llama.cpp assumes.
    dense = [i for i in layers if weights and f"blk.{i}.ffn_gate_inp.weight" not in weights]
    missing = [k for k in ("expert_count", "expert_used_count", "expert_feed_forward_length") if get(k) is None]
    if missing:
        raise MacllmError(f"GGUF is missing qwen3moe hyper-parameters ({', '.join(missing)})")
    cfg.extra.update({
        "num_experts": get("expert_count"),
        "num_experts_per_tok": get("expert_used_count"),
        "moe_intermediate_size": get("expert_feed_forward_length"),
        "decoder_sparse_step": 1,
        "mlp_only_layers": dense,
        # llama.cpp renormalises the top-k router weights for qwen3moe unless the file says otherwise.
        "norm_topk_prob": bool(get("expert_weights_norm", True)),
    })


def _gemma3_settings(cfg: ModelConfig, get) -> None:
    """What llama.cpp assumes for Gemma 3 beyond the metadata, written the way HF's config.json says it."""
    cfg.model_type = "gemma3_text"  # mlx-lm's name for the text-only model
    window = get("attention.sliding_window")
    # llama.cpp hard-codes: every 6th layer global, local rope base 10k; 27B scales queries by
    # hidden/heads instead of head_dim.
    scalar = cfg.hidden_size // cfg.num_attention_heads if cfg.num_hidden_layers == 62 else cfg.head_dim
    cfg.extra.update({
        "architectures": ["Gemma3ForCausalLM"],
        "sliding_window": int(window) if window else 512,
        "sliding_window_pattern": 6,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": scalar,
        "final_logit_softcapping": get("final_logit_softcapping"),
        "hidden_activation": "gelu_pytorch_tanh",
    })


class NeedsImport(MacllmError):
    """The file has tensor types MLX cannot read natively; gguf_import converts it."""


def _explain_load_failure(path: Path, err: MacllmError) -> MacllmError:
    """mx.load refuses tensor types it cannot read: importable ones mean NeedsImport, others are named."""
    try:
        _, infos = read_header(path)
    except MacllmError:
        return err
    bad = sorted({type_name(t.type_id) for t in infos} - set(NATIVE_TYPES))
    if not bad:
        return err
    check_types(infos, path)  # raises, naming a type nothing here can read
    return NeedsImport(f"{path.name} uses GGUF tensor type(s) {', '.join(bad)}")


def load_gguf_model(path: Path) -> tuple[ModelConfig, dict[str, mx.array], dict, mx.array | None]:
    """Returns config, weights (HF names, quantized triples kept), metadata, rope periods if stored.
    Raises NeedsImport for files with types only the gguf package can dequantize."""
    # The header decides, not mx.load: MLX refuses some other types (Q5_0) but decodes some itself, Q4_K
    # wrongly (MLX 0.32: errors up to 1.9 on Qwen2.5-Coder-1.5B's attn_q), so every non-native type imports.
    _, infos = read_header(Path(path))
    other_types = sorted({type_name(t.type_id) for t in infos} - set(NATIVE_TYPES))
    if other_types:
        check_types(infos, Path(path))  # raises, naming a type nothing here can read
        raise NeedsImport(f"{Path(path).name} uses GGUF tensor type(s) {', '.join(other_types)}")
    try:
        raw, meta = read_gguf(path, header_checked=True)  # read_header above validated it
    except MacllmError as e:
        raise _explain_load_failure(Path(path), e) from None
    return convert_tensors(raw, meta, Path(path).name)


def load_gguf_dequantized(path: Path) -> tuple[ModelConfig, dict[str, mx.array], dict, mx.array | None]:
    """Any GGUF, every tensor dequantized to float exactly as llama.cpp computes it (slow: numpy)."""
    raw, meta, _ = read_dequantized(Path(path))
    return convert_tensors(raw, meta, Path(path).name)


def convert_tensors(raw: dict[str, mx.array], meta: dict, name: str = "the GGUF file"):
    """GGUF names and layout -> mlx-lm's; also the config and rope periods."""
    cfg = config_from_metadata(meta, raw)
    check_sizes_fit_tensors(cfg, {key: tuple(value.shape) for key, value in raw.items()}, name)
    arch = architecture(meta)
    weights: dict[str, mx.array] = {}
    rope_periods = None
    for name, value in raw.items():
        if name == "rope_freqs.weight":
            # Llama 3 files store per-pair frequency factors; mx.fast.rope takes periods.
            dims = cfg.head_dim
            base_periods = cfg.rope_theta ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
            rope_periods = base_periods * value.astype(mx.float32)
            continue
        target = hf_name(name, arch)
        if target is None:
            continue
        if arch in _NORM_SHIFTED and target.endswith("norm.weight"):
            value = value - 1.0
        if cfg.model_type in _PERMUTED_QK and (".q_proj." in target or ".k_proj." in target):
            heads = cfg.num_attention_heads if ".q_proj." in target else cfg.num_key_value_heads
            value = unpermute_rows(value, heads)
        weights[target] = value
    cfg.quantization = quantization_from_weights(weights)
    return cfg, weights, meta, rope_periods


def quantization_from_weights(weights: dict[str, mx.array]) -> dict | None:
    """GGUF's native quantized types all use groups of 32; bits follow from packed width."""
    per_layer = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        prefix = name[: -len(".scales")]
        packed = weights[prefix + ".weight"]
        bits = packed.shape[-1] // scales.shape[-1]
        per_layer[prefix] = {"group_size": 32, "bits": int(bits)}
    if not per_layer:
        return None
    common = max(set(map(lambda q: q["bits"], per_layer.values())),
                 key=lambda b: sum(q["bits"] == b for q in per_layer.values()))
    quant: dict = {"group_size": 32, "bits": common}
    for prefix, q in per_layer.items():
        if q["bits"] != common:
            quant[prefix] = q
    return quant


def gguf_summary(path: Path) -> dict:
    """Architecture and sizes for `macllm models`, without loading tensors."""
    meta = read_gguf_metadata_only(path)
    return {"architecture": meta.get("general.architecture"), "name": meta.get("general.name")}
