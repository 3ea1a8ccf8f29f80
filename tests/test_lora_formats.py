"""Adapter files: mlx-lm's format both ways (trained by mlx_lm.lora -> macllm, ours -> mlx_lm.load with
identical greedy output) and Hugging Face PEFT folders."""

from __future__ import annotations

import json
import math
import sys

import mlx.core as mx
import numpy as np
import pytest

from macllm.engine import Engine
from macllm.generation import GenerationParams
from macllm.lora.formats import read_adapter, write_adapter
from macllm.lora.random_adapter import random_adapter

PROMPT = [1, 40, 50, 60, 70, 80, 90, 100]
TOKENS = 12


def macllm_greedy(folder, adapter_dir) -> list[int]:
    with Engine(str(folder), progress=False) as e:
        e.load_adapter(str(adapter_dir))
        e.set_adapters({e.adapters["loaded"][0]["name"]: 1.0})
        return e.generate(PROMPT, GenerationParams(max_tokens=TOKENS, temperature=0.0)).result().token_ids


def mlx_lm_greedy(folder, adapter_dir) -> list[int]:
    import mlx_lm
    from mlx_lm.generate import generate_step

    model, _ = mlx_lm.load(str(folder), adapter_path=str(adapter_dir))
    return [int(t) for t, _ in generate_step(mx.array(PROMPT), model, max_tokens=TOKENS)]


def assert_same_greedy(ours: list[int], theirs: list[int]) -> None:
    # We stop at EOS; mlx-lm's generate_step does not.
    assert ours == theirs[: len(ours)]
    assert len(ours) == TOKENS or ours[-1] == 2


@pytest.fixture(scope="module")
def mlx_lm_trained(tiny_llama_folder, tmp_path_factory):
    """An adapter trained by `mlx_lm.lora` itself (a few steps, in-process)."""
    from mlx_lm import lora

    root = tmp_path_factory.mktemp("mlx-lm-train")
    data = root / "data"
    data.mkdir()
    rows = "\n".join(json.dumps({"text": "hello world, hello user. " * 4}) for _ in range(8))
    (data / "train.jsonl").write_text(rows)
    (data / "valid.jsonl").write_text(rows)
    out = root / "adapter"
    argv = ["mlx_lm.lora", "--model", str(tiny_llama_folder), "--train", "--data", str(data), "--iters", "4",
            "--batch-size", "2", "--num-layers", "2", "--adapter-path", str(out), "--learning-rate", "2e-2",
            "--val-batches", "1", "--steps-per-report", "4"]
    old = sys.argv
    sys.argv = argv
    try:
        lora.main()
    finally:
        sys.argv = old
    return out


def test_adapter_trained_by_mlx_lm_loads_in_macllm_with_identical_greedy_output(tiny_llama_folder, mlx_lm_trained):
    adapter = read_adapter(mlx_lm_trained)
    assert adapter.rank == 8 and adapter.scale == 20.0 and adapter.layer_indices == [0, 1]
    assert any(float(mx.abs(b).max()) > 0 for _, b in adapter.weights.values())  # training moved B
    ours = macllm_greedy(tiny_llama_folder, mlx_lm_trained)
    with Engine(str(tiny_llama_folder), progress=False) as e:
        base = e.generate(PROMPT, GenerationParams(max_tokens=TOKENS)).result().token_ids
    assert ours != base  # the adapter matters, so agreement means something
    assert_same_greedy(ours, mlx_lm_greedy(tiny_llama_folder, mlx_lm_trained))


def test_our_adapter_loads_in_mlx_lm_with_identical_greedy_output(tiny_llama_folder, tmp_path):
    from macllm.loader import load_model

    cfg = load_model(str(tiny_llama_folder), progress=False).config
    # Only the last layer, q and v: mlx-lm must read num_layers and keys from our config.
    adapter = random_adapter(cfg, "ours", rank=4, keys=("self_attn.q_proj", "self_attn.v_proj"), layers=[1],
                             seed=3, b_std=0.8, scale=2.0, base_model=str(tiny_llama_folder))
    folder = write_adapter(adapter, tmp_path / "ours", cfg.num_hidden_layers)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["num_layers"] == 1 and config["lora_parameters"]["rank"] == 4
    ours = macllm_greedy(tiny_llama_folder, folder)
    assert_same_greedy(ours, mlx_lm_greedy(tiny_llama_folder, folder))


def write_peft(adapter, out, alpha, rslora=False):
    """A folder as PEFT saves it (the layout only; no PEFT needed)."""
    out.mkdir(parents=True)
    tensors = {}
    for module, (a, b) in adapter.weights.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.T
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.T
    mx.save_safetensors(str(out / "adapter_model.safetensors"), tensors)
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": adapter.rank, "lora_alpha": alpha,
        "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj", "down_proj"], "use_rslora": rslora,
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "bias": "none"}))
    return out


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapter_equals_the_same_weights_in_mlx_lm_format(tiny_llama_folder, tmp_path, rslora):
    from macllm.loader import load_model

    cfg = load_model(str(tiny_llama_folder), progress=False).config
    rank, alpha = 4, 16
    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    keys = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    ref = random_adapter(cfg, "ref", rank=rank, keys=keys, seed=5, b_std=0.1, scale=scale)
    peft_dir = write_peft(ref, tmp_path / "peft", alpha, rslora)
    peft = read_adapter(peft_dir)
    assert peft.format == "peft" and peft.rank == rank and peft.scale == pytest.approx(scale)
    assert set(peft.weights) == set(ref.weights)
    mlx_dir = write_adapter(ref, tmp_path / "mlx", cfg.num_hidden_layers)

    def run(folder):
        with Engine(str(tiny_llama_folder), progress=False) as e:
            e.load_adapter(str(folder), name="x")
            e.set_adapters({"x": 1.0})
            return e.submit(lambda: np.array(e.loaded.model(mx.array([PROMPT])))).result()

    np.testing.assert_allclose(run(peft_dir), run(mlx_dir), atol=1e-5)
