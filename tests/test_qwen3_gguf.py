"""Qwen3 and Qwen3-MoE as GGUF (llama.cpp's `qwen3` / `qwen3moe`), against mlx-lm, the oracle: tiny random
models built by mlx-lm are written with the gguf package's GGUFWriter the way llama.cpp's converter writes
them (its tensor names, q/k rows as stored: Qwen uses NEOX rope, so no permutation; each projection's experts
stacked (experts, out, in); a byte-level BPE vocabulary with the qwen2 pre-tokenizer), and macllm's logits
on the GGUF equal mlx-lm's on the source weights (float32: max abs diff <= 1e-4), greedy tokens too;
Q8_0 files (experts included) agree with mlx-lm on the same weights dequantized by the gguf package."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from macllm import cpu_kernels
from macllm.errors import MacllmError
from macllm.formats.gguf_model import load_gguf_model
from macllm.generation import GenerationParams, generate
from macllm.loader import load_model
from macllm.models.qwen3_moe import KernelQuantizedSwitchLinear, QuantizedSwitchLinear
from tests import tiny_models
from tests.test_qwen3 import PROMPT, QWEN3, QWEN3_MOE, max_diff, mlx_lm_model, vocab_config
from tests.tiny_gemma3 import random_kquant

MAX_DIFF = 1e-4
GREEDY_TOKENS = 12
# As llama.cpp handles qwen3moe: every layer sparse. (QWEN3_MOE's dense layer 1 is read too: no router there.)
QWEN3_MOE_ALL_SPARSE = dict(QWEN3_MOE, mlp_only_layers=[])

# mlx-lm parameter names -> llama.cpp's (gguf's tensor_mapping for Qwen3 / Qwen3-MoE).
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
          "mlp.switch_mlp.gate_proj": "ffn_gate_exps", "mlp.switch_mlp.up_proj": "ffn_up_exps",
          "mlp.switch_mlp.down_proj": "ffn_down_exps"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    if name in _TOP:
        return _TOP[name]
    _, _, layer, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def write_gguf(model: nn.Module, config: dict, path: Path, qtype: str = "F32",
               kquants: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The file llama.cpp's converter would write; returns the weights as llama.cpp computes with them
    (mlx-lm names), i.e. dequantized from what was stored. `kquants`: GGUF tensor kind -> k-quant type,
    stored as random blocks (the gguf package cannot quantize to k-quants)."""
    import gguf

    moe = config["model_type"] == "qwen3_moe"
    w = gguf.GGUFWriter(str(path), "qwen3moe" if moe else "qwen3")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    yarn = config.get("rope_scaling")
    if yarn:  # as llama.cpp's converter writes a yarn rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(yarn["factor"])
        w.add_rope_scaling_orig_ctx_len(yarn["original_max_position_embeddings"])
    if moe:
        w.add_expert_count(config["num_experts"])
        w.add_expert_used_count(config["num_experts_per_tok"])
        w.add_expert_feed_forward_length(config["moe_intermediate_size"])
    meta = tiny_models.tokenizer_metadata()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")  # what llama.cpp's converter writes for Qwen2/Qwen3 vocabularies
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(meta["tokenizer.chat_template"])
    used = {}
    rng = np.random.default_rng(0)
    for name, value in tree_flatten(model.parameters()):
        array = np.array(value.astype(mx.float32))
        kquant = (kquants or {}).get(gguf_name(name).split(".")[-2])
        if kquant:
            kind = getattr(gguf.GGMLQuantizationType, kquant)
            data = random_kquant(int(np.prod(array.shape[:-1])), array.shape[-1], kquant, rng)
            data = data.reshape(*array.shape[:-1], -1)
            w.add_tensor(gguf_name(name), data, raw_dtype=kind)
            used[name] = gguf.quants.dequantize(data, kind).reshape(array.shape)
            continue
        if qtype == "F32" or name.endswith("norm.weight"):
            w.add_tensor(gguf_name(name), array)
            used[name] = array
            continue
        kind = getattr(gguf.GGMLQuantizationType, qtype)
        data = gguf.quants.quantize(array, kind)
        w.add_tensor(gguf_name(name), data, raw_dtype=kind)
        used[name] = gguf.quants.dequantize(data, kind).reshape(array.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return used


def mlx_lm_greedy(model, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step

    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


CASES = [("qwen3", QWEN3, "F32"), ("qwen3moe", QWEN3_MOE_ALL_SPARSE, "F32"), ("qwen3moe-dense-layer", QWEN3_MOE, "F32"),
         ("qwen3-q8", QWEN3, "Q8_0"), ("qwen3moe-q8", QWEN3_MOE_ALL_SPARSE, "Q8_0")]


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
CASES.append(("qwen3-yarn", dict(QWEN3, rope_scaling=YARN), "F32"))


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,base,qtype", CASES, ids=[c[0] for c in CASES])
def test_gguf_logits_and_greedy_tokens_match_mlx_lm(tmp_path, name, base, qtype):
    config = vocab_config(base)
    theirs = mlx_lm_model(config)
    used = write_gguf(theirs, config, tmp_path / f"{name}.gguf", qtype)
    theirs.load_weights([(k, mx.array(v)) for k, v in used.items()])  # what the file holds, as floats
    ours = load_model(str(tmp_path / f"{name}.gguf"), progress=False)
    assert ours.config.model_type == config["model_type"]
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\n{name} GGUF ({qtype}): max abs logit diff vs mlx-lm {diff:.2e}")
    assert diff <= MAX_DIFF
    tokens = generate(ours.model, ours.tokenizer, PROMPT[:8],
                      GenerationParams(max_tokens=GREEDY_TOKENS, temperature=0.0)).token_ids
    reference = mlx_lm_greedy(theirs, PROMPT[:8], GREEDY_TOKENS)
    assert tokens == reference[: len(tokens)] and (len(tokens) == GREEDY_TOKENS or tokens[-1] == 2)


@pytest.mark.usefixtures("float_activations")
def test_q8_experts_run_quantized(tmp_path):
    """--keep-quantized: the stacked Q8_0 experts stay 8-bit (group 32), on our CPU kernel where it is built
    (mx.gather_qmm otherwise), and still agree with mlx-lm."""
    config = vocab_config(QWEN3_MOE_ALL_SPARSE)
    theirs = mlx_lm_model(config)
    used = write_gguf(theirs, config, tmp_path / "moe.gguf", "Q8_0")
    theirs.load_weights([(k, mx.array(v)) for k, v in used.items()])
    ours = load_model(str(tmp_path / "moe.gguf"), keep_quantized=True, progress=False)
    experts = ours.model.model.layers[0].mlp.switch_mlp.up_proj
    assert isinstance(experts, QuantizedSwitchLinear) and (experts.bits, experts.group_size) == (8, 32)
    assert (type(experts) is KernelQuantizedSwitchLinear) == (cpu_kernels.extension is not None)
    # MLX reads Q8_0 scales as float16 and its quantized kernels round accordingly: dense Qwen3 at Q8_0
    # differs from the float reference by 2e-3 the same way, so this bound is about rounding, not routing.
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\nqwen3moe Q8_0 kept quantized: max abs logit diff vs mlx-lm on the dequantized weights {diff:.2e}")
    assert diff <= 5e-3


def test_gguf_config_and_qwen2_vocabulary(tmp_path):
    config = vocab_config(QWEN3_MOE)
    write_gguf(mlx_lm_model(config), config, tmp_path / "moe.gguf")
    cfg, weights, meta, _ = load_gguf_model(tmp_path / "moe.gguf")
    assert cfg.extra["num_experts"] == 8 and cfg.extra["num_experts_per_tok"] == 2
    assert cfg.extra["moe_intermediate_size"] == 64 and cfg.extra["norm_topk_prob"] is True
    assert cfg.extra["mlp_only_layers"] == [1] and cfg.head_dim == 32 and cfg.tie_word_embeddings
    assert weights["model.layers.0.mlp.switch_mlp.down_proj.weight"].shape == (8, 64, 64)
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    tokenizer = load_model(str(tmp_path / "moe.gguf"), progress=False).tokenizer
    assert tokenizer.decode(tokenizer.encode("hello world 123")) == "hello world 123"


def test_expert_count_that_does_not_fit_the_tensors_is_one_line(tmp_path):
    config = vocab_config(QWEN3_MOE_ALL_SPARSE)
    path = tmp_path / "moe.gguf"
    write_gguf(mlx_lm_model(config), dict(config, num_experts=1 << 30), path)
    with pytest.raises(MacllmError, match="expert settings say"):
        load_model(str(path), progress=False)


# K-quant blocks hold 256 values: every expert width a multiple of 256.
KQUANT_MOE = dict(QWEN3_MOE_ALL_SPARSE, hidden_size=256, head_dim=64, intermediate_size=256,
                  moe_intermediate_size=256)


def test_kquant_experts_import_stacked_at_their_bits(tmp_path, monkeypatch):
    """Q4_K / Q5_K experts move into the imported MLX folder as they are (4 and 5 bits, group 32; the group
    scales rounded to float16, as for every imported matrix); Q6_K experts are re-quantized at 8 bits, expert
    by expert. Each expert lands in its place, and the model computes what mlx-lm does with those weights."""
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    config = vocab_config(KQUANT_MOE)
    theirs = mlx_lm_model(config)
    kquants = {"ffn_gate_exps": "Q4_K", "ffn_up_exps": "Q5_K", "ffn_down_exps": "Q6_K"}
    stored = write_gguf(theirs, config, tmp_path / "moe.gguf", "Q8_0", kquants)
    # The float32 path: its parameters are the imported values themselves (the kernel path keeps them packed).
    ours = load_model(str(tmp_path / "moe.gguf"), progress=False, cpu_kernel=False)
    quant = ours.config.quantization
    layer = "model.layers.0.mlp.switch_mlp"
    assert [quant.get(f"{layer}.{p}", quant)["bits"] for p in ("gate_proj", "up_proj", "down_proj")] == [4, 5, 8]
    imported = dict(tree_flatten(ours.model.parameters()))
    for name, value in stored.items():
        error = np.abs(np.array(imported[name]) - value).max() / max(np.abs(value).max(), 1e-30)
        assert error <= (5e-3 if "down_proj" in name and "switch_mlp" in name else 1e-3), (name, error)
    theirs.load_weights(list(imported.items()))
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\nqwen3moe k-quant experts imported: max abs logit diff vs mlx-lm on the same weights {diff:.2e}")
    assert diff <= MAX_DIFF
