"""Loading: every format gives the same model, and our forward pass matches mlx-lm's on the same weights."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from macllm.loader import load_model
from tests import tiny_models
from tests.conftest import cpu_kernel_off, took_path

TOKENS = mx.array([[1, 40, 41, 42, 120, 77, 200, 5, 9, 250]])


def logits_of(source, **kw):
    return load_model(str(source), progress=False, **kw).model(TOKENS)


def mlx_lm_logits(folder):
    import mlx_lm

    model, _ = mlx_lm.load(str(folder))
    return model(TOKENS)


def test_gguf_equals_folder_with_the_same_weights(tiny_llama_gguf, tiny_llama_folder):
    # The GGUF holds q/k rows permuted the llama.cpp way; loading must undo it exactly.
    assert mx.array_equal(logits_of(tiny_llama_gguf), logits_of(tiny_llama_folder))


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_matches_mlx_lm_on_float_weights(tmp_path, model_type):
    folder = tiny_models.write_tiny_folder(tmp_path / model_type, model_type=model_type)
    assert mx.allclose(logits_of(folder), mlx_lm_logits(folder), atol=1e-4)


def test_llama3_rope_scaling_matches_mlx_lm(tmp_path):
    folder = tiny_models.write_tiny_folder(tmp_path / "llama3")
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    (folder / "config.json").write_text(json.dumps(config))
    ours = logits_of(folder)
    assert mx.allclose(ours, mlx_lm_logits(folder), atol=1e-4)
    assert not mx.allclose(ours, logits_of(tiny_models.write_tiny_folder(tmp_path / "plain")), atol=1e-4)


@pytest.mark.usefixtures("float_activations")
def test_mlx_quantized_folder_with_per_layer_overrides(tmp_path):
    quant = {"group_size": 32, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 8}}
    folder = tiny_models.write_tiny_folder(tmp_path / "q", quantize=quant, shards=2)
    kept = load_model(str(folder), keep_quantized=True, progress=False)
    assert "4-bit" in kept.info.compute
    assert kept.model.model.layers[0].mlp.down_proj.bits == 8
    assert mx.allclose(kept.model(TOKENS), mlx_lm_logits(folder), atol=1e-4)
    # The float32 fast path computes the same function from dequantized weights.
    assert mx.allclose(logits_of(folder), kept.model(TOKENS), atol=1e-3)


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("quant", ["q4_1", "q8_0"])
def test_quantized_gguf_float32_path_equals_quantized_path(tmp_path, quant):
    path = tiny_models.write_tiny_gguf(tmp_path / f"{quant}.gguf", quant=quant)
    with cpu_kernel_off():
        fast = load_model(str(path), progress=False)
        kept = load_model(str(path), keep_quantized=True, progress=False)
    assert fast.info.compute.startswith("float32") and "quantized" in kept.info.compute
    assert mx.allclose(fast.model(TOKENS), kept.model(TOKENS), atol=2e-2)
    # The default CPU path: our kernel on the stored weights, where it is built.
    default = load_model(str(path), progress=False)
    assert took_path("default", default.info.compute), default.info.compute
    if "CPU kernel" in default.info.compute:
        # The same dequantized values as the float32 path, computed in float32: only summation order differs
        # (the kept path above computes with float16 activations, hence its looser tolerance).
        assert mx.allclose(default.model(TOKENS), fast.model(TOKENS), atol=1e-4)
        with cpu_kernel_off():  # float32 stays available
            assert load_model(str(path), progress=False).info.compute.startswith("float32")


def test_float16_folder_runs_in_float32_on_cpu(tmp_path):
    folder = tiny_models.write_tiny_folder(tmp_path / "f16", dtype="float16")
    loaded = load_model(str(folder), progress=False)
    assert loaded.model.model.layers[0].self_attn.q_proj.weight.dtype == mx.float32
    assert mx.allclose(loaded.model(TOKENS), logits_of(tiny_models.write_tiny_folder(tmp_path / "f32")), atol=5e-2)


def test_model_info(tiny_llama_gguf):
    info = load_model(str(tiny_llama_gguf), progress=False).info
    assert info.architecture == "llama" and info.parameters > 0 and info.context_length == 512
