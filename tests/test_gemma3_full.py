"""Full (multimodal) Gemma 3 checkpoints run as text models, against mlx-lm, the oracle: tiny random models
built *and saved* by mlx-lm's `gemma3` wrapper (its Model class, save_model/save_config, quantize_model as
`mlx_lm.convert -q` runs it) give the same logits (float32: max abs diff <= 1e-4) and greedy tokens in
macllm, 4-bit too; the transformers layouts (`language_model.model.*` with `vision_tower.*`, and newer
`model.language_model.*`) load the same weights; the vision tower is left out with one notice."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from macllm.errors import MacllmError
from macllm.formats.text_config import text_model_config
from macllm.generation import GenerationParams, generate
from macllm.loader import load_model
from macllm.models.gemma3 import VISION_NOTICE
from tests import tiny_models
from tests.conftest import cpu_kernel_off, took_path
from tests.test_qwen3 import save_as_mlx_lm

MAX_DIFF = 1e-4
GREEDY_TOKENS = 12
PROMPT = [1, *((40 + 37 * i) % 270 + 5 for i in range(19))]  # 20 tokens: crosses the window of 8

# Like Gemma 3 4B's config.json: the text_config names only sizes, the window and rope scaling; heads (8),
# kv heads (4), head_dim (256), query_pre_attn_scalar, eps, rope bases and the layer pattern are defaults.
# 7 layers, pattern 6: layer 5 is global. hidden 64: sqrt(64) is exact in bfloat16 (mlx-lm rounds to it).
TEXT_CONFIG = dict(model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=7,
                   sliding_window=8, rope_scaling={"factor": 8.0, "rope_type": "linear"})
VISION_CONFIG = {"model_type": "siglip_vision_model", "hidden_size": 16, "image_size": 32, "patch_size": 16}


def wrapper_config() -> dict:
    return {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
            "vocab_size": tiny_models.vocab_size(), "text_config": copy.deepcopy(TEXT_CONFIG),
            "vision_config": VISION_CONFIG, "bos_token_id": 1, "eos_token_id": [2], "mm_tokens_per_image": 4}


def mlx_lm_gemma3(config: dict, seed: int = 0) -> nn.Module:
    """mlx-lm's multimodal gemma3 wrapper with random weights, norms off zero, tied embeddings (no lm_head,
    as the real checkpoints ship)."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(copy.deepcopy(config)))
    model.language_model.sanitize({})  # no lm_head.weight: mlx-lm ties the embeddings
    norms = [(name, 0.2 * mx.random.normal(value.shape))
             for name, value in tree_flatten(model.parameters()) if name.endswith("norm.weight")]
    model.load_weights(norms, strict=False)
    mx.eval(model.parameters())
    return model


def vision_tensors(prefix: str) -> dict[str, mx.array]:
    """A stand-in for the SigLIP tower and projector (names as transformers saves them)."""
    return {f"{prefix}vision_tower.vision_model.embeddings.patch_embedding.weight": mx.zeros((16, 3, 16, 16)),
            f"{prefix}vision_tower.vision_model.post_layernorm.weight": mx.ones((16,)),
            f"{prefix}multi_modal_projector.mm_input_projection_weight": mx.zeros((16, 64)),
            f"{prefix}multi_modal_projector.mm_soft_emb_norm.weight": mx.zeros((16,))}


def transformers_layout(src: Path, folder: Path, newer: bool) -> Path:
    """The same weights renamed as transformers saves Gemma3ForConditionalGeneration: before 4.52
    `language_model.model.*` beside `vision_tower.*`; since then `model.language_model.*`, `model.vision_tower.*`."""
    folder.mkdir()
    weights = mx.load(str(src / "model.safetensors"))
    if newer:
        weights = {"model.language_model." + k.removeprefix("language_model.model."): v for k, v in weights.items()}
    weights.update(vision_tensors("model." if newer else ""))
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    (folder / "config.json").write_text((src / "config.json").read_text())
    tiny_models.write_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gemma3-full")
    config = wrapper_config()
    out = {"float": save_as_mlx_lm(mlx_lm_gemma3(config), config, root / "float"),
           "4bit": save_as_mlx_lm(mlx_lm_gemma3(config), config, root / "4bit", bits=4)}
    out["transformers"] = transformers_layout(out["float"], root / "transformers", newer=False)
    out["transformers-new"] = transformers_layout(out["float"], root / "transformers-new", newer=True)
    return out


def max_diff(ours: mx.array, theirs: mx.array) -> float:
    return mx.abs(ours.astype(mx.float32) - theirs.astype(mx.float32)).max().item()


def mlx_lm_greedy(model, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step

    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=n)]


def our_greedy(loaded, prompt: list[int], n: int) -> list[int]:
    return generate(loaded.model, loaded.tokenizer, prompt, GenerationParams(max_tokens=n, temperature=0.0)).token_ids


@pytest.mark.parametrize("name,keep_quantized", [("float", False), ("4bit", True), ("transformers", False),
                                                 ("transformers-new", False)])
@pytest.mark.usefixtures("float_activations")
def test_logits_and_greedy_tokens_match_mlx_lm(folders, name, keep_quantized, capfd):
    import mlx_lm

    ours = load_model(str(folders[name]), keep_quantized=keep_quantized, progress=False)
    notices = capfd.readouterr().err.count(VISION_NOTICE)
    assert notices == (1 if name.startswith("transformers") else 0)  # mlx-lm's save already dropped the tower
    assert ours.info.architecture == "gemma3_text"
    assert ours.info.quantization == ("4-bit g64" if keep_quantized else "none")
    theirs, _ = mlx_lm.load(str(folders["4bit" if name == "4bit" else "float"]))
    diff = max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT])))
    print(f"\ngemma3 full ({name}): max abs logit diff vs mlx-lm {diff:.2e}")
    assert diff <= MAX_DIFF
    ours_tokens, theirs_tokens = our_greedy(ours, PROMPT[:8], GREEDY_TOKENS), mlx_lm_greedy(theirs, PROMPT[:8],
                                                                                           GREEDY_TOKENS)
    assert ours_tokens == theirs_tokens[: len(ours_tokens)] and (len(ours_tokens) == GREEDY_TOKENS
                                                                 or ours_tokens[-1] == 2)


@pytest.mark.usefixtures("float_activations")
def test_4bit_on_the_float32_fast_path_agrees(folders):
    import mlx_lm

    with cpu_kernel_off():
        ours = load_model(str(folders["4bit"]), progress=False)
    assert ours.info.compute.startswith("float32")
    theirs, _ = mlx_lm.load(str(folders["4bit"]))
    assert max_diff(ours.model(mx.array([PROMPT])), theirs(mx.array([PROMPT]))) <= 1e-3
    default = load_model(str(folders["4bit"]), progress=False)  # our CPU kernel where it is built
    assert took_path("default", default.info.compute), default.info.compute
    assert max_diff(default.model(mx.array([PROMPT])), theirs(mx.array([PROMPT]))) <= 1e-3


def test_text_config_takes_gemma3_defaults_as_mlx_lm_does(folders):
    cfg = load_model(str(folders["float"]), progress=False).config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 4, 256)
    assert cfg.vocab_size == tiny_models.vocab_size() and cfg.tie_word_embeddings
    assert cfg.rope_scaling == {"factor": 8.0, "rope_type": "linear"} and cfg.rope_theta == 1e6
    assert cfg.extra["query_pre_attn_scalar"] == 256 and cfg.extra["sliding_window"] == 8
    assert "text_config" not in cfg.extra and "vision_config" not in cfg.extra


def test_quantization_overrides_follow_the_text_model_names():
    raw = wrapper_config()
    raw["quantization"] = {"group_size": 64, "bits": 4, "language_model.model.embed_tokens": {"group_size": 64,
                                                                                              "bits": 8},
                           "model.language_model.layers.0.mlp.down_proj": False,
                           "vision_tower.vision_model.encoder.layers.0.mlp.fc1": {"group_size": 64, "bits": 8}}
    quant = text_model_config(raw)["quantization"]
    assert quant == {"group_size": 64, "bits": 4, "model.embed_tokens": {"group_size": 64, "bits": 8},
                     "model.layers.0.mlp.down_proj": False}


def test_transformers_5_rope_parameters_per_layer_type():
    raw = wrapper_config()
    raw["text_config"]["rope_parameters"] = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 500_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 20_000.0}}
    out = text_model_config(raw)
    assert out["rope_theta"] == 500_000.0 and out["rope_local_base_freq"] == 20_000.0
    assert out["rope_scaling"] == {"rope_type": "linear", "factor": 8.0} and "rope_parameters" not in out


def test_text_config_without_sizes_is_one_clear_error(tmp_path):
    raw = wrapper_config()
    del raw["text_config"]["hidden_size"]
    with pytest.raises(MacllmError, match="text_config lacks hidden_size"):
        text_model_config(raw)
    raw["text_config"] = "oops"
    with pytest.raises(MacllmError, match="text_config is not a JSON object"):
        text_model_config(raw)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {}}))
    with pytest.raises(MacllmError, match="lacks hidden_size, num_hidden_layers, intermediate_size"):
        load_model(str(folder), progress=False)
