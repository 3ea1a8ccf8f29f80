"""Qwen3 and Qwen3-MoE against mlx-lm, the oracle: tiny random models built *and saved* by mlx-lm (its own
Model classes, save_model/save_config, quantize_model as `mlx_lm.convert -q` runs it) must give the same
logits in macllm (float32: max abs diff <= 1e-4) and the same greedy tokens; 4-bit too; with an mlx-lm
LoRA adapter for Qwen3; and Hugging Face's per-expert MoE layout loads into the same stacked experts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_map

from macllm.config import ModelConfig, MoEArgs
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, generate
from macllm.loader import load_model
from macllm.lora.formats import read_adapter
from macllm.lora.manager import AdapterManager
from tests import tiny_models
from tests.conftest import cpu_kernel_off, took_path

MAX_DIFF = 1e-4
GREEDY_TOKENS = 12
# 40 tokens x top-2 = 80 (token, expert) pairs: over the threshold where the experts run sorted.
PROMPT = [1, *((40 + 37 * i) % 270 + 5 for i in range(39))]  # ids within the 279-token vocabulary

# head_dim 32 x 4 heads = 128 != hidden 64: Qwen3's head_dim comes from the config, not hidden / heads.
QWEN3 = dict(model_type="qwen3", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
             rope_theta=1_000_000.0, max_position_embeddings=512, tie_word_embeddings=False)
# Layers 0 and 2 sparse, layer 1 dense (mlp_only_layers). Group 64 divides every expert matrix.
QWEN3_MOE = dict(QWEN3, model_type="qwen3_moe", num_hidden_layers=3, tie_word_embeddings=True, num_experts=8,
                 num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1, mlp_only_layers=[1],
                 norm_topk_prob=True)
LORA = {"rank": 4, "scale": 2.0, "dropout": 0.0}
ATTENTION_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]


def mlx_lm_model(config: dict, seed: int = 0) -> nn.Module:
    """mlx-lm's own model class for this config, with random weights (norms perturbed off 1)."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    norms = [(name, 1.0 + 0.2 * mx.random.normal(value.shape))
             for name, value in tree_flatten(model.parameters()) if name.endswith("norm.weight")]
    model.load_weights(norms, strict=False)
    mx.eval(model.parameters())
    return model


def save_as_mlx_lm(model: nn.Module, config: dict, folder: Path, bits: int | None = None) -> Path:
    """An mlx-community style folder written by mlx-lm itself (quantized as `mlx_lm.convert -q` does)."""
    from mlx_lm.utils import quantize_model, save_config, save_model

    config = copy.deepcopy(config)
    if bits:
        model, config = quantize_model(model, config, group_size=64, bits=bits)
    save_model(folder, model)
    save_config(config, folder / "config.json")
    tiny_models.write_tokenizer_files(folder)
    return folder


def vocab_config(base: dict) -> dict:
    return dict(base, vocab_size=tiny_models.vocab_size(), bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Each family, float32 and 4-bit, saved by mlx-lm from the same random weights."""
    out = {}
    root = tmp_path_factory.mktemp("qwen3")
    for name, base in (("qwen3", QWEN3), ("qwen3_moe", QWEN3_MOE)):
        config = vocab_config(base)
        out[name] = save_as_mlx_lm(mlx_lm_model(config), config, root / name)
        out[f"{name}-4bit"] = save_as_mlx_lm(mlx_lm_model(config), config, root / f"{name}-4bit", bits=4)
    return out


def max_diff(ours: mx.array, theirs: mx.array) -> float:
    return mx.abs(ours.astype(mx.float32) - theirs.astype(mx.float32)).max().item()


def mlx_lm_greedy(model, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step

    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def our_greedy(loaded, prompt: list[int], n: int) -> list[int]:
    return generate(loaded.model, loaded.tokenizer, prompt, GenerationParams(max_tokens=n, temperature=0.0)).token_ids


def assert_same_greedy(ours: list[int], theirs: list[int]) -> None:
    # We stop at end-of-sequence (id 2); mlx-lm's generate_step does not.
    assert ours == theirs[: len(ours)] and (len(ours) == GREEDY_TOKENS or ours[-1] == 2), (ours, theirs)


CASES = [("qwen3", False), ("qwen3_moe", False), ("qwen3-4bit", True), ("qwen3_moe-4bit", True)]


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,keep_quantized", CASES)
def test_logits_and_greedy_tokens_match_mlx_lm(folders, name, keep_quantized):
    """Float32 folders on our float path; 4-bit folders with --keep-quantized (the same quantized kernels)."""
    assert_matches_mlx_lm(folders[name], keep_quantized)


def assert_matches_mlx_lm(folder: Path, keep_quantized: bool) -> None:
    """Our own implementation's logits and greedy tokens equal mlx-lm's on the folder (also tests/test_phi3_smollm3)."""
    import mlx_lm

    ours = load_model(str(folder), keep_quantized=keep_quantized, progress=False)
    theirs, _ = mlx_lm.load(str(folder))
    assert ours.info.implementation == "own"
    assert ours.info.quantization == ("4-bit g64" if keep_quantized else "none")
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\n{folder.name}: max abs logit diff vs mlx-lm {diff:.2e}")
    assert diff <= MAX_DIFF
    assert_same_greedy(our_greedy(ours, PROMPT[:8], GREEDY_TOKENS), mlx_lm_greedy(theirs, PROMPT[:8], GREEDY_TOKENS))


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name", ["qwen3-4bit", "qwen3_moe-4bit"])
def test_4bit_folder_on_the_float32_fast_path_agrees(folders, name):
    """By default the CPU dequantizes to float32 (router included); the same weights, other rounding."""
    assert_4bit_folder_agrees_on_the_cpu_paths(folders[name])


def assert_4bit_folder_agrees_on_the_cpu_paths(folder: Path) -> None:
    """The float32 fast path and the default path (our CPU kernel where built) within 1e-3 of mlx-lm on 4-bit."""
    import mlx_lm

    with cpu_kernel_off():
        ours = load_model(str(folder), progress=False)
    assert ours.info.compute.startswith("float32")
    theirs, _ = mlx_lm.load(str(folder))
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\n{folder.name} dequantized: max abs logit diff vs mlx-lm 4-bit {diff:.2e}")
    assert diff <= 1e-3
    default = load_model(str(folder), progress=False)  # our CPU kernel where it is built
    assert took_path("default", default.info.compute), default.info.compute
    assert max_diff(default.model(mx.array([PROMPT])), theirs(mx.array([PROMPT]))) <= 1e-3


def test_moe_router_is_quantized_at_8_bits_as_mlx_lm_does(folders):
    """mlx-lm's qwen3_moe keeps the router at 8 bits; the per-layer override in the config says so."""
    config = json.loads((folders["qwen3_moe-4bit"] / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.gate"]["bits"] == 8
    ours = load_model(str(folders["qwen3_moe-4bit"]), keep_quantized=True, progress=False)
    body = ours.model.model
    assert body.layers[0].mlp.gate.bits == 8 and body.layers[0].mlp.switch_mlp.up_proj.bits == 4
    assert type(body.layers[1].mlp).__name__ == "MLP"  # mlp_only_layers


def test_cached_decoding_equals_one_pass(folders):
    from macllm.cache import make_cache

    model = load_model(str(folders["qwen3_moe"]), progress=False).model
    full = model(mx.array([PROMPT]))[0]
    cache = make_cache(model)
    steps = [model(mx.array([PROMPT[:30]]), cache=cache)[0]]
    steps += [model(mx.array([[t]]), cache=cache)[0] for t in PROMPT[30:]]
    assert max_diff(mx.concatenate(steps), full) <= MAX_DIFF


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_hugging_face_per_expert_layout_loads_into_stacked_experts(folders, tmp_path, norm_topk_prob):
    """`mlp.experts.N.*_proj.weight` (transformers' layout) -> sanitize stacks them; same logits as mlx-lm."""
    import mlx_lm

    src = folders["qwen3_moe"]
    config = json.loads((src / "config.json").read_text())
    config["norm_topk_prob"] = norm_topk_prob
    weights = mx.load(str(src / "model.safetensors"))
    hf = {}
    for name, value in weights.items():
        if ".switch_mlp." in name:
            prefix, rest = name.split(".switch_mlp.")
            for e in range(value.shape[0]):
                hf[f"{prefix}.experts.{e}.{rest}"] = value[e]
        else:
            hf[name] = value
    folder = tmp_path / "hf"
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), hf)
    (folder / "config.json").write_text(json.dumps(config))
    tiny_models.write_tokenizer_files(folder)
    ours = load_model(str(folder), progress=False)
    theirs, _ = mlx_lm.load(str(folder))
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\nHF per-expert layout, norm_topk_prob={norm_topk_prob}: max abs diff {diff:.2e}")
    assert diff <= MAX_DIFF


def test_missing_expert_tensor_is_one_clear_error():
    from macllm.models.qwen3_moe import stack_experts

    w = {f"model.layers.0.mlp.experts.{e}.up_proj.weight": mx.zeros((2, 2)) for e in (0, 2)}
    with pytest.raises(MacllmError, match=r"expert tensor\(s\) \[1\] missing"):
        stack_experts(w)


def test_sparse_layers_follow_step_and_mlp_only_layers():
    cfg = ModelConfig.from_hf_dict(vocab_config(dict(QWEN3_MOE, decoder_sparse_step=2, mlp_only_layers=[3])))
    moe = MoEArgs.from_config(cfg)
    assert [moe.is_sparse(i) for i in range(6)] == [False, True, False, False, False, True]
    with pytest.raises(MacllmError, match="lacks num_experts"):
        MoEArgs.from_config(ModelConfig.from_hf_dict(vocab_config(QWEN3)))
    with pytest.raises(MacllmError, match="3 of 2 experts per token"):
        too_many = dict(QWEN3_MOE, num_experts=2, num_experts_per_tok=3)
        MoEArgs.from_config(ModelConfig.from_hf_dict(vocab_config(too_many)))
    with pytest.raises(MacllmError, match="non-integer expert settings"):
        MoEArgs.from_config(ModelConfig.from_hf_dict(vocab_config(dict(QWEN3_MOE, num_experts="many"))))


@pytest.mark.parametrize("scaling", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "beta_fast": 16, "beta_slow": 2,
     "mscale": 0.8, "mscale_all_dim": 0.5},
])
def test_yarn_rope_scaling_matches_mlx_lm(tmp_path, scaling):
    """Qwen3's long-context setting (rope_scaling yarn): stretched low frequencies and the attention factor,
    on the CPU tables and on mx.fast.rope (Metal's path) alike."""
    import mlx_lm

    from macllm.models.rope import RoPE

    config = vocab_config(dict(QWEN3, rope_scaling=scaling))
    folder = save_as_mlx_lm(mlx_lm_model(config), config, tmp_path / "yarn")
    ours = load_model(str(folder), progress=False)
    theirs, _ = mlx_lm.load(str(folder))
    prompt = mx.array([PROMPT])
    assert max_diff(ours.model(prompt), theirs(prompt)) <= MAX_DIFF
    rope = RoPE(32, 1_000_000.0, scaling)
    x = mx.random.normal((1, 2, 5, 32))
    table = rope(x, offset=90)
    with mx.stream(mx.cpu):
        rope._use_tables = lambda: False  # type: ignore[method-assign]
        fused = rope(x, offset=90)
    assert max_diff(table, fused) <= 1e-5


def test_rope_parameters_of_transformers_5_configs():
    raw = {k: v for k, v in vocab_config(QWEN3).items() if k != "rope_theta"}
    cfg = ModelConfig.from_hf_dict(dict(raw, rope_parameters={"rope_type": "default", "rope_theta": 5e5}))
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling is None


# ---------------------------------------------------------------- LoRA adapters made by mlx-lm


def save_mlx_lm_adapter(folder: Path, out: Path, keys: list[str] | None = None, seed: int = 1) -> Path:
    """mlx-lm's linear_to_lora_layers on its own load of the folder, random A and B (B starts at zero in
    training), saved as its trainer saves: adapters.safetensors + adapter_config.json."""
    import mlx_lm
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    model, _ = mlx_lm.load(str(folder))
    model.freeze()
    params = dict(LORA, keys=keys) if keys else dict(LORA)
    linear_to_lora_layers(model, len(model.layers), params)
    mx.random.seed(seed)
    trained = tree_map(lambda p: 0.1 * mx.random.normal(p.shape), model.trainable_parameters())
    model.update(trained)
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    save_config({"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": params},
                out / "adapter_config.json")
    return out


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,keep_quantized", [("qwen3", False), ("qwen3-4bit", True)])
def test_mlx_lm_lora_adapter_loads_and_swaps_on_qwen3(folders, tmp_path, name, keep_quantized):
    """q/k/v/o and the MLP projections of every layer: same logits and greedy tokens as mlx-lm with the
    adapter; swapped off, the base model's logits come back exactly."""
    import mlx_lm

    adapter_dir = save_mlx_lm_adapter(folders[name], tmp_path / "adapter")
    ours = load_model(str(folders[name]), keep_quantized=keep_quantized, progress=False)
    base = ours.model(mx.array([PROMPT]))
    adapter = read_adapter(adapter_dir)
    assert {m.rsplit(".", 1)[-1] for m in adapter.weights} == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"}
    manager = AdapterManager(ours.model, ours.config)
    manager.load(adapter)
    manager.activate({adapter.name: 1.0})
    theirs, _ = mlx_lm.load(str(folders[name]), adapter_path=str(adapter_dir))
    with_adapter = ours.model(mx.array([PROMPT]))
    diff = max_diff(with_adapter, theirs(mx.array([PROMPT])))
    print(f"\n{name} + mlx-lm LoRA: max abs logit diff {diff:.2e}")
    assert diff <= MAX_DIFF and max_diff(with_adapter, base) > 1e-2  # the adapter really acts
    assert_same_greedy(our_greedy(ours, PROMPT[:8], GREEDY_TOKENS), mlx_lm_greedy(theirs, PROMPT[:8], GREEDY_TOKENS))
    manager.activate({})
    assert max_diff(ours.model(mx.array([PROMPT])), base) == 0.0


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("name,keep_quantized", [("qwen3_moe", False), ("qwen3_moe-4bit", True)])
def test_mlx_lm_default_lora_with_expert_adapters_matches_mlx_lm_on_qwen3_moe(folders, tmp_path, name,
                                                                              keep_quantized):
    """mlx-lm's trainer puts LoRA on every expert by default (LoRASwitchLinear, 3-D A/B): such an adapter
    gives mlx-lm's logits and greedy tokens, blends with an attention-only one as the sum of both, and
    switched off gives the base back exactly."""
    import mlx_lm

    folder = folders[name]
    experts_dir = save_mlx_lm_adapter(folder, tmp_path / "all")
    attn_dir = save_mlx_lm_adapter(folder, tmp_path / "attn", keys=ATTENTION_KEYS, seed=2)
    ours = load_model(str(folder), keep_quantized=keep_quantized, progress=False)
    base = ours.model(mx.array([PROMPT]))
    experts, attn = read_adapter(experts_dir), read_adapter(attn_dir)
    assert any(m.endswith("switch_mlp.up_proj") for m in experts.weights)
    manager = AdapterManager(ours.model, ours.config)
    manager.load(experts)
    manager.load(attn)
    manager.activate({experts.name: 1.0})
    theirs, _ = mlx_lm.load(str(folder), adapter_path=str(experts_dir))
    with_experts = ours.model(mx.array([PROMPT]))
    diff = max_diff(with_experts, theirs(mx.array([PROMPT])))
    print(f"\n{name} + mlx-lm LoRA on experts: max abs logit diff {diff:.2e}")
    assert diff <= MAX_DIFF and max_diff(with_experts, base) > 1e-2
    assert_same_greedy(our_greedy(ours, PROMPT[:8], GREEDY_TOKENS), mlx_lm_greedy(theirs, PROMPT[:8], GREEDY_TOKENS))

    # A blend stacks the pairs along the rank axis: equal to both deltas applied, within float rounding.
    manager.activate({experts.name: 1.0, attn.name: 0.5})
    blend = ours.model(mx.array([PROMPT]))
    manager.activate({attn.name: 0.5})
    attn_only = ours.model(mx.array([PROMPT]))
    assert max_diff(blend, with_experts) > 1e-2 and max_diff(blend, attn_only) > 1e-2
    manager.activate({})
    assert max_diff(ours.model(mx.array([PROMPT])), base) == 0.0


def test_expert_adapter_fused_into_the_weights_equals_the_live_adapter(folders, tmp_path):
    """fuse_weights adds each expert's own delta to its slice of the stacked (experts, out, in) weight."""
    from macllm.loader import read_model_files
    from macllm.lora.fuse import fuse_weights

    folder = folders["qwen3_moe"]
    adapter = read_adapter(save_mlx_lm_adapter(folder, tmp_path / "all"))
    ours = load_model(str(folder), progress=False)
    manager = AdapterManager(ours.model, ours.config)
    manager.load(adapter)
    manager.activate({adapter.name: 1.0})
    live = ours.model(mx.array([PROMPT]))
    cfg, weights, _, _ = read_model_files(folder)
    fused = fuse_weights(weights, cfg.quantization, [(adapter, 1.0)])
    plain = load_model(str(folder), progress=False)
    plain.model.load_weights(list(fused.items()), strict=False)
    assert max_diff(plain.model(mx.array([PROMPT])), live) <= MAX_DIFF


def test_expert_adapter_for_another_expert_count_is_one_line_and_changes_nothing(folders, tmp_path):
    folder = folders["qwen3_moe"]
    adapter = read_adapter(save_mlx_lm_adapter(folder, tmp_path / "all"))
    module = next(m for m in adapter.weights if m.endswith("switch_mlp.up_proj"))
    a, b = adapter.weights[module]
    adapter.weights[module] = (a[:4], b[:4])
    ours = load_model(str(folder), progress=False)
    manager = AdapterManager(ours.model, ours.config)
    with pytest.raises(MacllmError, match=r"switch_mlp\.up_proj: it has 4 experts, the layer 8"):
        manager.load(adapter)
    assert not manager.loaded and not manager._layers
