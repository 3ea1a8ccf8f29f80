"""Architectures we do not implement run on mlx-lm's own model classes (macllm/models/mlx_lm_family.py).

For each of 20 architectures from mlx-lm's list, a tiny random model built *and saved* by mlx-lm (an
mlx-community style folder) loads in macllm ("mlx-lm" implementation), greedy-generates the tokens
mlx-lm's own generate gives on the same weights, takes a random LoRA adapter on its linear layers (the
output changes, and comes back when it is switched off), and trains 2 steps. Recurrent and hybrid
caches (mamba, lfm2) say in one line that a changed prompt is recomputed, and still answer as mlx-lm does.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from macllm.cache import make_cache
from macllm.errors import MacllmError
from macllm.generation import GenerationParams, generate
from macllm.loader import load_model
from macllm.lora.adapter import Adapter
from macllm.lora.manager import AdapterManager
from macllm.lora.store import fingerprint
from macllm.models.implementation import implementation, mlx_lm_architectures
from macllm.tuner.examples import Example, TrainingData
from macllm.tuner.train import TrainConfig, Trainer
from tests import tiny_models
from tests.conftest import cpu_kernel_off
from tests.test_qwen3 import save_mlx_lm_adapter

GREEDY_TOKENS = 8
PROMPT = [1, 40, 77, 114, 151, 188, 225, 262, 30, 67]
COMMON = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
              max_position_embeddings=512, tie_word_embeddings=False)
# Each architecture's own settings beyond COMMON (names as in mlx-lm's ModelArgs).
ARCHITECTURES = {
    # (phi3 and smollm3 moved to our own classes: tests/test_phi3_smollm3.py)
    "phi": dict(partial_rotary_factor=0.5, layer_norm_eps=1e-5),
    "gemma": {},
    "gemma2": dict(query_pre_attn_scalar=16, sliding_window=32, attn_logit_softcapping=50.0,
                   final_logit_softcapping=30.0),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "olmo2": {},
    "granite": dict(embedding_multiplier=12.0, attention_multiplier=0.1, residual_multiplier=0.2,
                    logits_scaling=8.0, attention_bias=False, mlp_bias=False),
    "starcoder2": dict(norm_epsilon=1e-5, use_bias=True),
    "cohere": dict(layer_norm_eps=1e-5, logit_scale=0.0625, use_qk_norm=False),
    "internlm2": dict(bias=False),
    "stablelm": dict(partial_rotary_factor=0.25, layer_norm_eps=1e-5, use_qkv_bias=True),
    "gpt_neox": dict(layer_norm_eps=1e-5, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True),
    "minicpm": dict(dim_model_base=32, scale_depth=1.4, scale_emb=12),
    "helium": dict(attention_bias=False, mlp_bias=False),
    "ernie4_5": dict(use_bias=False),
    "hunyuan_v1_dense": dict(use_qk_norm=True),
    "seed_oss": {},
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "lfm2": dict(conv_bias=False, conv_L_cache=3, block_dim=64, block_ff_dim=128, block_multiple_of=16,
                 block_ffn_dim_multiplier=1.0, block_auto_adjust_ff_dim=False, full_attn_idxs=[1], norm_eps=1e-5,
                 layer_types=["conv", "full_attention"]),
    "mamba": dict(state_size=8, conv_kernel=4, expand=2, time_step_rank=8, use_bias=False, use_conv_bias=True),
}
RECURRENT = ("lfm2", "mamba")


def config_for(arch: str, **overrides) -> dict:
    return dict(COMMON, model_type=arch, vocab_size=tiny_models.vocab_size(), bos_token_id=1, eos_token_id=2,
                **{**ARCHITECTURES[arch], **overrides})


def save_mlx_lm_folder(arch: str, folder: Path, bits: int | None = None, **overrides) -> Path:
    """mlx-lm's own class with random weights (norms off 1), saved by mlx-lm as mlx-community folders are."""
    from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

    config = config_for(arch, **overrides)
    model_class, args_class = _get_classes(config)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(config))
    norms = [(n, 1.0 + 0.2 * mx.random.normal(v.shape)) for n, v in tree_flatten(model.parameters())
             if n.endswith("norm.weight")]
    model.load_weights(norms, strict=False)
    mx.eval(model.parameters())
    if bits:
        model, config = quantize_model(model, config, group_size=32, bits=bits)
    save_model(folder, model)
    save_config(config, folder / "config.json")
    tiny_models.write_tokenizer_files(folder)
    return folder


def mlx_lm_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model as mlx_lm_load_model

    model, _ = mlx_lm_load_model(folder)
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def our_greedy(loaded, prompt: list[int], n: int = GREEDY_TOKENS) -> list[int]:
    params = GenerationParams(max_tokens=n, temperature=0.0)
    return generate(loaded.model, loaded.tokenizer, prompt, params).token_ids


def assert_same_greedy(ours: list[int], theirs: list[int]) -> None:
    # We stop at end-of-sequence (id 2); mlx-lm's generate_step does not.
    assert ours == theirs[: len(ours)] and (len(ours) == GREEDY_TOKENS or ours[-1] == 2), (ours, theirs)


def random_lora(model: nn.Module, paths: list[str], rank: int = 4, seed: int = 1) -> Adapter:
    """mlx-lm's adapter layout (A: in x rank, B: rank x out) on the given linear layers, B not zero."""
    from macllm.lora.layers import base_dims
    from macllm.lora.manager import find_module

    key, weights = mx.random.key(seed), {}
    for path in paths:
        in_dims, out_dims = base_dims(find_module(model, path)[2])
        key, ka, kb = mx.random.split(key, 3)
        weights[path] = (mx.random.uniform(-in_dims ** -0.5, in_dims ** -0.5, (in_dims, rank), key=ka),
                         mx.random.normal((rank, out_dims), key=kb) * 0.5)
    return Adapter(name="random", rank=rank, scale=2.0, weights=weights, keys=[])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mlx-lm-family")
    return {arch: save_mlx_lm_folder(arch, root / arch) for arch in ARCHITECTURES}


def test_the_architectures_are_mlx_lm_ones_we_do_not_implement():
    assert len(ARCHITECTURES) >= 15
    known = set(mlx_lm_architectures())
    for arch in ARCHITECTURES:
        assert arch in known and implementation(arch) == "mlx-lm"
    assert implementation("qwen3") == implementation("llama") == "own"
    assert implementation("no_such_arch") is None and implementation("../base") is None


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_load_generate_adapter_swap_and_two_training_steps(folders, arch):
    folder = folders[arch]
    loaded = load_model(str(folder), progress=False)
    assert loaded.info.implementation == "mlx-lm" and loaded.info.architecture == arch
    assert loaded.info.compute == "float32"

    # The same greedy tokens as mlx-lm's generate on the same saved weights.
    base = our_greedy(loaded, PROMPT)
    assert_same_greedy(base, mlx_lm_greedy(folder, PROMPT, GREEDY_TOKENS))

    # A LoRA on the attention (or, in a recurrent block, every) linear layer of each layer: swap in, out.
    model = loaded.model
    paths = model.lora_paths(None, ["self_attn.q_proj", "self_attn.v_proj"])
    assert paths
    manager = AdapterManager(model, loaded.config)
    manager.load(random_lora(model, paths))
    manager.activate({"random": 1.0})
    assert our_greedy(loaded, PROMPT) != base or _logits_moved(loaded, manager)
    manager.activate({})
    assert our_greedy(loaded, PROMPT) == base
    manager.unload("random")

    # Two training steps of `macllm train`'s Trainer on every target it knows.
    examples = [Example(tokens=[1, *((7 * i + 13 * j) % 270 + 5 for j in range(8))]) for i in range(4)]
    events: list[dict] = []
    trainer = Trainer(loaded, TrainingData(train=examples, valid=[]),
                      TrainConfig(iters=2, batch=2, lr=1e-2, warmup=0, rank=4), emit=events.append)
    assert trainer.run() == "done"
    losses = [e["train_loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    trained = trainer.adapter()
    assert trained.base_fingerprint == fingerprint(loaded.config)
    assert any(mx.abs(b).max().item() > 0 for _, b in trained.weights.values())


def test_mlx_lm_default_lora_on_mixtral_experts_gives_mlx_lm_logits(folders, tmp_path):
    """mlx-lm's trainer adapts the experts too (its LoRASwitchLinear on SwitchGLU): on mlx-lm's own Mixtral
    class our expert slots give the logits mlx-lm gives with the same adapter."""
    import mlx_lm

    from macllm.lora.formats import read_adapter

    folder = folders["mixtral"]
    adapter_dir = save_mlx_lm_adapter(folder, tmp_path / "adapter")
    adapter = read_adapter(adapter_dir)
    assert any(a.ndim == 3 for a, _ in adapter.weights.values())
    loaded = load_model(str(folder), progress=False)
    manager = AdapterManager(loaded.model, loaded.config)
    manager.load(adapter)
    manager.activate({adapter.name: 1.0})
    theirs, _ = mlx_lm.load(str(folder), adapter_path=str(adapter_dir))
    prompt = mx.array([PROMPT])
    ours = loaded.model(prompt)
    assert mx.abs(ours - theirs(prompt)).max().item() <= 1e-4
    manager.activate({})
    assert mx.abs(loaded.model(prompt) - ours).max().item() > 1e-3


def _logits_moved(loaded, manager: AdapterManager) -> bool:
    """A tiny model's greedy path can survive a small delta; its logits cannot."""
    prompt = mx.array([PROMPT])
    on = loaded.model(prompt)
    active = dict(manager.active)
    manager.activate({})
    off = loaded.model(prompt)
    manager.activate(active)
    return mx.abs(on - off).max().item() > 1e-3


@pytest.mark.parametrize("arch", RECURRENT)
def test_recurrent_caches_recompute_a_changed_prompt_and_say_so_in_one_line(folders, arch, capsys):
    loaded = load_model(str(folders[arch]), progress=False)
    params = GenerationParams(max_tokens=4, temperature=0.0)
    cache = make_cache(loaded.model)
    first = generate(loaded.model, loaded.tokenizer, PROMPT, params, cache=cache, cached=[])
    # The next prompt shares a prefix but differs after it: a recurrent state cannot go back.
    edited = PROMPT[:6] + [99, 98, 97]
    again = generate(loaded.model, loaded.tokenizer, edited, params, cache=cache, cached=first.fed_tokens)
    assert again.stats.prefilled_tokens == len(edited)
    fresh = generate(loaded.model, loaded.tokenizer, edited, params)
    assert again.token_ids == fresh.token_ids
    notes = [line for line in capsys.readouterr().err.splitlines() if "cannot go back" in line]
    assert len(notes) == 1, notes


def test_attention_caches_reuse_the_prefix(folders):
    loaded = load_model(str(folders["phi"]), progress=False)
    params = GenerationParams(max_tokens=4, temperature=0.0)
    cache = make_cache(loaded.model)
    first = generate(loaded.model, loaded.tokenizer, PROMPT, params, cache=cache, cached=[])
    follow = first.fed_tokens + [50, 51]
    again = generate(loaded.model, loaded.tokenizer, follow, params, cache=cache, cached=first.fed_tokens)
    assert again.stats.prefilled_tokens == 2
    assert again.token_ids == generate(loaded.model, loaded.tokenizer, follow, params).token_ids


def test_kv_bits_quantize_attention_layers_and_leave_the_others(tmp_path, capsys):
    """Group 32 divides a head width of 32: the attention layer quantizes, the conv layer cannot (one line)."""
    loaded = load_model(str(save_mlx_lm_folder("lfm2", tmp_path / "lfm2", head_dim=32,
                                                   num_attention_heads=2, num_key_value_heads=2)), progress=False)
    cache = make_cache(loaded.model, kv_bits=8)
    assert [c.kind for c in cache] == ["ArraysCache", "QuantizedKVCache"]
    notes = [line for line in capsys.readouterr().err.splitlines() if "--kv-bits" in line]
    assert len(notes) == 1 and "ArraysCache layers stay in full precision" in notes[0], notes
    out = generate(loaded.model, loaded.tokenizer, PROMPT, GenerationParams(max_tokens=4, temperature=0.0),
                   cache=cache, cached=[])
    assert len(out.token_ids) >= 1


def test_quantized_folder_runs_on_the_float32_fast_path_with_the_same_fingerprint(folders, tmp_path):
    quantized = save_mlx_lm_folder("phi", tmp_path / "phi-4bit", bits=4)
    with cpu_kernel_off():  # the float32 fast path: the default without our CPU kernel
        loaded = load_model(str(quantized), progress=False)
    assert loaded.info.compute.startswith("float32 (dequantized") and loaded.info.quantization == "4-bit g32"
    assert fingerprint(loaded.config) == fingerprint(load_model(str(folders["phi"]), progress=False).config)
    kept = load_model(str(quantized), keep_quantized=True, progress=False)
    assert our_greedy(kept, PROMPT) == mlx_lm_greedy(quantized, PROMPT, GREEDY_TOKENS)[:len(our_greedy(kept, PROMPT))]


def test_an_architecture_nobody_implements_is_one_line(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no_such_arch", "hidden_size": 8}')
    with pytest.raises(MacllmError, match="unsupported model architecture 'no_such_arch'"):
        load_model(str(folder), progress=False)
