"""Phi-3 / Phi-4 and SmolLM3 on our own implementation, against mlx-lm, the oracle: tiny random models built
*and saved* by mlx-lm (its own Model classes, save_model/save_config, quantize_model as `mlx_lm.convert -q`
runs it) give the same logits in macllm (float32: max abs diff <= 1e-4) and the same greedy tokens; 4-bit
too; with an mlx-lm LoRA on the fused qkv_proj; and GGUFs written with the gguf package's GGUFWriter as
llama.cpp's converter writes `phi3` (attn_qkv, gate+up in ffn_up, rope_factors_long/short) and `smollm3`
(q/k rows permuted for llama.cpp's interleaved rope, NoPE every 4th layer) load with the same logits."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from macllm.config import ModelConfig
from macllm.errors import MacllmError
from macllm.loader import load_model
from macllm.lora.formats import read_adapter
from macllm.lora.manager import AdapterManager
from macllm.models.implementation import implementation
from macllm.models.smollm3 import rope_layers
from macllm.tuner.examples import Example, TrainingData
from macllm.tuner.train import TrainConfig, Trainer
from tests import tiny_models
from tests.conftest import cpu_kernel_off
from tests.test_qwen3 import (
    GREEDY_TOKENS,
    PROMPT,
    assert_4bit_folder_agrees_on_the_cpu_paths,
    assert_matches_mlx_lm,
    assert_same_greedy,
    max_diff,
    mlx_lm_greedy,
    mlx_lm_model,
    our_greedy,
    save_as_mlx_lm,
    save_mlx_lm_adapter,
    vocab_config,
)

MAX_DIFF = 1e-4
PHI3 = dict(model_type="phi3", hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
            tie_word_embeddings=False)
# Phi-3-mini-128k style: "su" factors over all 8 rotated pairs; context 32x the original (attention factor > 1).
_FACTORS = [1.0, 1.3, 2.0, 3.5, 6.0, 11.0, 19.0, 30.0]
PHI3_SU = dict(PHI3, max_position_embeddings=131072, original_max_position_embeddings=4096,
               rope_scaling={"type": "su", "long_factor": _FACTORS, "short_factor": [1.0] * 8,
                             "original_max_position_embeddings": 4096})  # transformers 5 wants it here too
# Phi-4-mini style: 3/4 of each head rotated (6 pairs), "longrope", tied embeddings.
PHI4_MINI = dict(PHI3, max_position_embeddings=131072, original_max_position_embeddings=4096,
                 partial_rotary_factor=0.75, tie_word_embeddings=True,
                 rope_scaling={"type": "longrope", "long_factor": _FACTORS[:6], "short_factor": [1.0] * 6,
                               "original_max_position_embeddings": 4096})
# Layers 1 and 3 without RoPE; the listed variant turns off 0 and 2 instead.
SMOLLM3 = dict(model_type="smollm3", hidden_size=64, num_hidden_layers=4, intermediate_size=128,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=5e6,
               max_position_embeddings=512, tie_word_embeddings=True, no_rope_layer_interval=2)
SMOLLM3_LISTED = dict(SMOLLM3, no_rope_layers=[0, 1, 0, 1])
FAMILIES = {"phi3": PHI3, "phi3-su": PHI3_SU, "phi4-mini": PHI4_MINI, "smollm3": SMOLLM3,
            "smollm3-listed": SMOLLM3_LISTED}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each family, float32 and 4-bit, saved by mlx-lm from the same random weights."""
    out = {}
    root = tmp_path_factory.mktemp("phi3-smollm3")
    for name, base in FAMILIES.items():
        config = vocab_config(base)
        out[name] = save_as_mlx_lm(mlx_lm_model(config), config, root / name)
        if name in ("phi3-su", "phi4-mini", "smollm3"):
            out[f"{name}-4bit"] = save_as_mlx_lm(mlx_lm_model(config), config, root / f"{name}-4bit", bits=4)
    return out


def test_both_families_are_ours():
    assert implementation("phi3") == implementation("smollm3") == "own"


CASES = [(name, False) for name in FAMILIES] + [(f"{n}-4bit", True) for n in ("phi3-su", "phi4-mini", "smollm3")]


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,keep_quantized", CASES)
def test_logits_and_greedy_tokens_match_mlx_lm(folders, name, keep_quantized):
    """Float32 folders on our float path; 4-bit folders with --keep-quantized (the same quantized kernels)."""
    assert_matches_mlx_lm(folders[name], keep_quantized)


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name", ["phi4-mini-4bit", "smollm3-4bit"])
def test_4bit_folder_on_the_float32_fast_path_agrees(folders, name):
    assert_4bit_folder_agrees_on_the_cpu_paths(folders[name])


def test_longrope_and_nope_really_act(folders):
    """The scaled rope changes the logits (against plain rope on the same weights); so do the NoPE layers."""
    su = load_model(str(folders["phi3-su"]), progress=False)
    plain_cfg = ModelConfig.from_hf_dict(dict(su.config.to_hf_dict(), rope_scaling=None))
    from macllm.models.phi3 import Model as Phi3

    plain = Phi3(plain_cfg)
    plain.load_weights(tree_flatten(su.model.parameters()))
    assert max_diff(su.model(mx.array([PROMPT])), plain(mx.array([PROMPT]))) > 1e-2
    attention = su.model.model.layers[0].self_attn
    assert attention.rope.attention_factor == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    smol = load_model(str(folders["smollm3"]), progress=False)
    assert [type(layer.self_attn.rope).__name__ for layer in smol.model.model.layers] == \
        ["RoPE", "NoRoPE", "RoPE", "NoRoPE"]


def test_cached_decoding_equals_one_pass(folders):
    from macllm.cache import make_cache

    for name in ("phi4-mini", "smollm3"):
        model = load_model(str(folders[name]), progress=False).model
        full = model(mx.array([PROMPT]))[0]
        cache = make_cache(model)
        steps = [model(mx.array([PROMPT[:30]]), cache=cache)[0]]
        steps += [model(mx.array([[t]]), cache=cache)[0] for t in PROMPT[30:]]
        assert max_diff(mx.concatenate(steps), full) <= MAX_DIFF, name


def test_no_rope_layers_from_the_config():
    cfg = ModelConfig.from_hf_dict(vocab_config(dict(SMOLLM3, num_hidden_layers=8, no_rope_layer_interval=None)))
    assert rope_layers(cfg) == [True, True, True, False] * 2  # the default interval, 4
    with pytest.raises(MacllmError, match="no_rope_layers must list one 0/1 per layer"):
        rope_layers(ModelConfig.from_hf_dict(vocab_config(dict(SMOLLM3, no_rope_layers=[1, 0]))))


def test_bad_longrope_factors_are_one_line(tmp_path, folders):
    import json
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(folders["phi3-su"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"]["long_factor"] = [1.0, 2.0]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MacllmError, match="2 values for 8 rotated pairs"):
        load_model(str(folder), progress=False)
    config["partial_rotary_factor"] = 0.01
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MacllmError, match="rotates 0 of 16 features"):
        load_model(str(folder), progress=False)


# ---------------------------------------------------------------- LoRA adapters made by mlx-lm


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,keep_quantized", [("phi3-su", False), ("phi4-mini-4bit", True), ("smollm3", False)])
def test_mlx_lm_lora_adapter_loads_and_swaps(folders, tmp_path, name, keep_quantized):
    """mlx-lm's default LoRA keys (every linear layer: for Phi-3 the fused qkv_proj and gate_up_proj): same
    logits and greedy tokens as mlx-lm with the adapter; swapped off, the base logits come back exactly."""
    import mlx_lm

    adapter_dir = save_mlx_lm_adapter(folders[name], tmp_path / "adapter")
    ours = load_model(str(folders[name]), keep_quantized=keep_quantized, progress=False)
    base = ours.model(mx.array([PROMPT]))
    adapter = read_adapter(adapter_dir)
    wrapped = {m.rsplit(".", 1)[-1] for m in adapter.weights}
    if name.startswith("phi"):
        assert wrapped == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    manager = AdapterManager(ours.model, ours.config)
    manager.load(adapter)
    manager.activate({adapter.name: 1.0})
    theirs, _ = mlx_lm.load(str(folders[name]), adapter_path=str(adapter_dir))
    with_adapter = ours.model(mx.array([PROMPT]))
    diff = max_diff(with_adapter, theirs(mx.array([PROMPT])))
    print(f"\n{name} + mlx-lm LoRA: max abs logit diff {diff:.2e}")
    assert diff <= MAX_DIFF and max_diff(with_adapter, base) > 1e-2
    assert_same_greedy(our_greedy(ours, PROMPT[:8], GREEDY_TOKENS), mlx_lm_greedy(theirs, PROMPT[:8], GREEDY_TOKENS))
    manager.activate({})
    assert max_diff(ours.model(mx.array([PROMPT])), base) == 0.0


def test_training_wraps_the_fused_projections(folders):
    """`macllm train`'s default targets on Phi-3 land on qkv_proj (q, v) and the loss stays finite."""
    loaded = load_model(str(folders["phi3"]), progress=False)
    examples = [Example(tokens=[1, *((7 * i + 13 * j) % 270 + 5 for j in range(8))]) for i in range(4)]
    events: list[dict] = []
    trainer = Trainer(loaded, TrainingData(train=examples, valid=[]),
                      TrainConfig(iters=2, batch=2, lr=1e-2, warmup=0, rank=4), emit=events.append)
    assert trainer.paths and all(p.endswith((".qkv_proj", ".o_proj", ".gate_up_proj", ".down_proj"))
                                 for p in trainer.paths)
    assert len(set(trainer.paths)) == len(trainer.paths)
    assert trainer.run() == "done"
    losses = [e["train_loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


# ---------------------------------------------------------------- GGUF as llama.cpp's converter writes it

_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
          "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str:
    if name in _TOP:
        return _TOP[name]
    _, _, layer, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter (LlamaModel.permute): half-split rope rows -> interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: nn.Module | dict[str, mx.array], config: dict, path: Path,
               qtype: str = "F32") -> dict[str, np.ndarray]:
    """The file llama.cpp's converter would write (Phi3MiniModel / SmolLM3Model) from a model or its flat
    weights; returns the weights as stored, dequantized, under mlx-lm's names."""
    import gguf

    arch = config["model_type"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    rope_dims = int(config.get("partial_rotary_factor", 1.0) * config["hidden_size"]) // heads
    w.add_rope_dimension_count(rope_dims)
    scaling = config.get("rope_scaling")
    if arch == "phi3":
        original = config.get("original_max_position_embeddings", 4096)
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_sliding_window(0)
        if scaling:
            stretch = config["max_position_embeddings"] / original
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(stretch) / math.log(original)))
            w.add_tensor("rope_factors_long.weight", np.array(scaling["long_factor"], dtype=np.float32))
            w.add_tensor("rope_factors_short.weight", np.array(scaling["short_factor"], dtype=np.float32))
    meta = tiny_models.tokenizer_metadata()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(meta["tokenizer.chat_template"])
    used = {}
    # (an nn.Module is a dict too: ask for the module first)
    weights = dict(tree_flatten(model.parameters())) if isinstance(model, nn.Module) else model
    for name, value in weights.items():
        if config.get("tie_word_embeddings") and name == "lm_head.weight":
            continue
        array = np.array(value.astype(mx.float32))
        stored = array
        if arch == "smollm3" and (".q_proj." in name or ".k_proj." in name):
            stored = permute(array, heads if ".q_proj." in name else kv)
        if qtype == "F32" or name.endswith("norm.weight"):
            w.add_tensor(gguf_name(name), stored)
            used[name] = array
            continue
        kind = getattr(gguf.GGMLQuantizationType, qtype)
        data = gguf.quants.quantize(stored, kind)
        w.add_tensor(gguf_name(name), data, raw_dtype=kind)
        dequantized = gguf.quants.dequantize(data, kind).reshape(array.shape)
        if stored is not array:  # back to Hugging Face row order: the inverse permutation
            heads_here = heads if ".q_proj." in name else kv
            dequantized = dequantized.reshape(heads_here, dequantized.shape[0] // heads_here // 2, 2, -1) \
                .swapaxes(1, 2).reshape(array.shape)
        used[name] = dequantized
    assert head_dim * heads == config["hidden_size"]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return used


# llama.cpp reads no NoPE setting from a smollm3 GGUF: every 4th layer (here layer 3) goes without RoPE.
GGUF_FAMILIES = dict(FAMILIES, smollm3=dict(SMOLLM3, no_rope_layer_interval=4))
GGUF_CASES = [("phi3", "F32"), ("phi3-su", "F32"), ("phi4-mini", "F32"), ("phi4-mini", "Q8_0"),
              ("smollm3", "F32"), ("smollm3", "Q8_0")]


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,qtype", GGUF_CASES, ids=[f"{n}-{q}" for n, q in GGUF_CASES])
def test_gguf_logits_and_greedy_tokens_match_mlx_lm(tmp_path, name, qtype):
    config = vocab_config(GGUF_FAMILIES[name])
    theirs = mlx_lm_model(config)
    used = write_gguf(theirs, config, tmp_path / f"{name}.gguf", qtype)
    theirs.load_weights([(k, mx.array(v)) for k, v in used.items()], strict=False)  # as the file holds them
    ours = load_model(str(tmp_path / f"{name}.gguf"), progress=False)
    assert ours.config.model_type == config["model_type"] and ours.info.implementation == "own"
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\n{name} GGUF ({qtype}): max abs logit diff vs mlx-lm {diff:.2e}")
    assert diff <= MAX_DIFF
    assert_same_greedy(our_greedy(ours, PROMPT[:8], GREEDY_TOKENS), mlx_lm_greedy(theirs, PROMPT[:8], GREEDY_TOKENS))


def test_gguf_with_separate_q_k_v_is_fused(tmp_path):
    """llama.cpp also reads phi3 files with attn_q/k/v apart: they are stacked into qkv_proj."""
    config = vocab_config(PHI3)
    theirs = mlx_lm_model(config)
    split = {}
    q_rows = config["num_attention_heads"] * 16
    kv_rows = config["num_key_value_heads"] * 16
    for name, value in tree_flatten(theirs.parameters()):
        if name.endswith("qkv_proj.weight"):
            prefix = name.removesuffix("qkv_proj.weight")
            q, k, v = mx.split(value, [q_rows, q_rows + kv_rows], axis=0)
            split.update({f"{prefix}q_proj.weight": q, f"{prefix}k_proj.weight": k, f"{prefix}v_proj.weight": v})
        else:
            split[name] = value

    write_gguf(split, config, tmp_path / "split.gguf")
    ours = load_model(str(tmp_path / "split.gguf"), progress=False)
    assert max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT]))) <= MAX_DIFF


def test_gguf_with_a_wrong_fused_width_is_one_line(tmp_path):
    config = vocab_config(PHI3)
    path = tmp_path / "wrong.gguf"
    write_gguf(mlx_lm_model(config), dict(config, intermediate_size=96), path)
    with pytest.raises(MacllmError, match=r"ffn_up\.weight has shape .* 192 rows"):
        load_model(str(path), progress=False)


def test_gguf_import_keeps_longrope_and_partial_rotary(tmp_path, monkeypatch):
    """A type MLX cannot read (BF16) goes through the cached import: the factors, the attention factor and the
    rotated width travel in the imported config.json, and the model computes what mlx-lm does with the
    imported weights."""
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    config = vocab_config(PHI4_MINI)
    theirs = mlx_lm_model(config)
    write_gguf(theirs, config, tmp_path / "phi4-mini-bf16.gguf", "BF16")
    with cpu_kernel_off():  # float weights, which the float mlx-lm model below takes as they are
        ours = load_model(str(tmp_path / "phi4-mini-bf16.gguf"), progress=False)
    scaling = ours.config.rope_scaling
    assert scaling is not None and scaling["long_factor"] == pytest.approx(_FACTORS[:6])
    assert ours.config.extra["partial_rotary_factor"] == 0.75
    theirs.load_weights(tree_flatten(ours.model.parameters()))
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\nphi4-mini GGUF (BF16, imported): max abs logit diff vs mlx-lm on the same weights {diff:.2e}")
    assert diff <= MAX_DIFF


def test_rope_without_tables_agrees(folders, monkeypatch):
    """The fused-kernel path (Metal's: mx.fast.rope with the attention factor applied to the rotated part)
    gives what the CPU tables give, partial rotary included."""
    from macllm.models.rope import RoPE

    ours = load_model(str(folders["phi4-mini"]), progress=False)
    tables = ours.model(mx.array([PROMPT]))
    monkeypatch.setattr(RoPE, "_use_tables", lambda self: False)
    assert max_diff(ours.model(mx.array([PROMPT])), tables) <= MAX_DIFF
