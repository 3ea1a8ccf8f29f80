"""Live LoRA adapters on tiny models: the four correctness promises of set_adapters, and the layer."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams
from macllm.lora.formats import write_adapter
from macllm.lora.layers import LoRALinear
from macllm.lora.random_adapter import random_adapter

GREEDY = GenerationParams(max_tokens=8, temperature=0.0)
PROMPT = [1, 40, 50, 60, 70, 80, 90, 100]


@pytest.fixture(scope="module")
def adapter_dirs(tiny_llama_folder, tmp_path_factory):
    """Two adapters strong enough to change a tiny model's greedy answers."""
    from macllm.loader import load_model

    cfg = load_model(str(tiny_llama_folder), progress=False).config
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for seed, name in enumerate(("alpha", "beta")):
        a = random_adapter(cfg, name, rank=4, seed=seed + 1, b_std=0.5, base_model="tiny")
        dirs[name] = write_adapter(a, root / name, cfg.num_hidden_layers)
    return dirs


@pytest.fixture
def engine(tiny_llama_folder, adapter_dirs):
    with Engine(str(tiny_llama_folder), progress=False) as e:
        for path in adapter_dirs.values():
            e.load_adapter(str(path))
        yield e


def logits(engine, tokens=PROMPT) -> np.ndarray:
    def job():
        out = engine.loaded.model(mx.array([tokens]))
        mx.eval(out)
        return np.array(out)

    return engine.submit(job).result()


def turn(engine, conv, text):
    return engine.chat(conv, text, GREEDY).result()


def test_swap_mid_conversation_matches_a_fresh_engine_started_with_the_new_adapter(engine, tiny_llama_folder,
                                                                                  adapter_dirs):
    engine.set_adapters({"alpha": 1.0})
    conv = engine.new_conversation(system="be brief")
    first = turn(engine, conv, "hello")
    engine.set_adapters({"beta": 1.0})
    assert engine.context_used(conv) == 0  # cache computed under alpha is gone
    second = turn(engine, conv, "world")
    assert second.stats.prefilled_tokens == second.stats.prompt_tokens  # fully re-prefilled

    with Engine(str(tiny_llama_folder), progress=False) as fresh:
        fresh.load_adapter(str(adapter_dirs["beta"]))
        fresh.set_adapters({"beta": 1.0})
        history = engine.conversation(conv).messages[:2]
        assert history[1]["content"] == first.text
        other = fresh.new_conversation(system="be brief", messages=history)
        assert turn(fresh, other, "world").token_ids == second.token_ids


def test_adapters_change_the_output(engine):
    base = logits(engine)
    engine.set_adapters({"alpha": 1.0})
    with_alpha = logits(engine)
    engine.set_adapters({"beta": 1.0})
    assert not np.allclose(with_alpha, base) and not np.allclose(logits(engine), with_alpha)


def test_scale_zero_is_exactly_the_base_model(engine):
    base = logits(engine)
    engine.set_adapters({"alpha": 0.0})
    assert np.array_equal(logits(engine), base)
    engine.set_adapters({"alpha": 0.0, "beta": 0})
    assert np.array_equal(logits(engine), base)


def test_swapping_back_to_none_is_exactly_the_base_model(engine):
    base_logits = logits(engine)
    base_tokens = engine.generate(PROMPT, GREEDY).result().token_ids
    engine.set_adapters({"alpha": 1.0, "beta": 0.5})
    assert not np.array_equal(logits(engine), base_logits)
    engine.set_adapters({})
    assert np.array_equal(logits(engine), base_logits)
    assert engine.generate(PROMPT, GREEDY).result().token_ids == base_tokens
    engine.set_adapters({"beta": 1.0})
    engine.unload_adapter("beta")
    assert engine.adapters["active"] == {}
    assert np.array_equal(logits(engine), base_logits)


def merged_logits(folder, adapter_dirs, weights: dict[str, float], keep_quantized=False) -> np.ndarray:
    """The base with W + sum w * delta merged into dense weights (the reference for blends)."""
    from macllm.loader import load_model
    from macllm.lora.formats import read_adapter
    from macllm.lora.manager import find_module

    loaded = load_model(str(folder), progress=False, keep_quantized=keep_quantized)
    adapters = {n: read_adapter(adapter_dirs[n]) for n in weights}
    for module in adapters[next(iter(weights))].weights:
        parent, key, layer = find_module(loaded.model, module)
        if isinstance(layer, nn.QuantizedLinear):
            w = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=layer.group_size, bits=layer.bits)
        else:
            w = layer.weight
        for name, scale in weights.items():
            w = w + scale * adapters[name].delta(module)
        dense = nn.Linear(w.shape[1], w.shape[0], bias="bias" in layer)
        dense.weight = w
        if "bias" in layer:
            dense.bias = layer.bias
        setattr(parent, key, dense) if not isinstance(parent, list) else parent.__setitem__(int(key), dense)
    out = loaded.model(mx.array([PROMPT]))
    return np.array(out)


def test_blend_equals_merged_weights(engine, tiny_llama_folder, adapter_dirs):
    engine.set_adapters({"alpha": 1.0, "beta": 0.5})
    expected = merged_logits(tiny_llama_folder, adapter_dirs, {"alpha": 1.0, "beta": 0.5})
    np.testing.assert_allclose(logits(engine), expected, atol=2e-4, rtol=1e-4)


def test_single_adapter_with_scale_equals_merged_weights(engine, tiny_llama_folder, adapter_dirs):
    engine.set_adapters({"beta": 0.7})
    expected = merged_logits(tiny_llama_folder, adapter_dirs, {"beta": 0.7})
    np.testing.assert_allclose(logits(engine), expected, atol=2e-4, rtol=1e-4)


@pytest.mark.usefixtures("float_activations")
def test_lora_on_a_quantized_base(tmp_path, adapter_dirs):
    from tests.tiny_models import write_tiny_folder

    folder = write_tiny_folder(tmp_path / "q8", quantize={"bits": 8, "group_size": 32})
    with Engine(str(folder), keep_quantized=True, progress=False) as e:
        assert "quantized" in e.info.compute
        e.load_adapter(str(adapter_dirs["alpha"]))
        e.set_adapters({"alpha": 1.0})
        layer = e.loaded.model.model.layers[0].self_attn.q_proj
        assert isinstance(layer, LoRALinear) and isinstance(layer.linear, nn.QuantizedLinear)
        got = logits(e)
    expected = merged_logits(folder, adapter_dirs, {"alpha": 1.0}, keep_quantized=True)
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-3)


def test_swap_touches_no_base_weight(engine):
    q = engine.loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear)
    before = q.linear.weight
    engine.set_adapters({"alpha": 1.0})
    engine.set_adapters({"beta": 1.0})
    assert q.linear.weight is before
    assert engine.loaded.model.model.layers[0].self_attn.q_proj is q


def test_unloading_every_adapter_restores_the_bare_layers(engine):
    engine.unload_adapter("alpha")
    engine.unload_adapter("beta")
    assert isinstance(engine.loaded.model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert engine.adapters == {"loaded": [], "active": {}}


def test_same_adapter_twice_under_another_name(engine, adapter_dirs):
    engine.load_adapter(str(adapter_dirs["alpha"]), name="alpha2")
    engine.set_adapters({"alpha2": 1.0})
    twin = logits(engine)
    engine.set_adapters({"alpha": 1.0})
    assert np.array_equal(logits(engine), twin)
