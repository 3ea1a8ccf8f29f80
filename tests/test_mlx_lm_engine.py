"""The Engine end to end on models that run on mlx-lm's classes (macllm/models/mlx_lm_family.py): multi-turn
chat with prefix reuse, adapter swap and blend, cancel, perplexity, `macllm train` and `macllm fuse` as commands,
and mlx-lm's model-type aliases. Tiny random models made and saved by mlx-lm (tests/test_mlx_lm_family.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from macllm.cli import main
from macllm.engine import Engine
from macllm.generation import GenerationParams, TokenEvent
from macllm.loader import load_model
from macllm.lora import formats
from macllm.lora.store import fingerprint
from macllm.models.implementation import implementation, mlx_lm_aliases
from macllm.quant.perplexity import perplexity, window_starts
from tests.test_mlx_lm_family import (
    GREEDY_TOKENS,
    PROMPT,
    assert_same_greedy,
    mlx_lm_greedy,
    our_greedy,
    random_lora,
    save_mlx_lm_folder,
)
from tests.train_helpers import train, write_repeated

GREEDY = GenerationParams(max_tokens=6, temperature=0.0)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def olmo2(tmp_path_factory) -> Path:
    """An attention-only family we do not implement."""
    return save_mlx_lm_folder("olmo2", tmp_path_factory.mktemp("olmo2") / "olmo2")


@pytest.fixture(scope="module")
def lfm2(tmp_path_factory) -> Path:
    """A hybrid family: a convolution (recurrent) layer and an attention layer."""
    return save_mlx_lm_folder("lfm2", tmp_path_factory.mktemp("lfm2") / "lfm2")


@pytest.fixture(scope="module")
def olmo2_adapters(olmo2, tmp_path_factory) -> dict[str, Path]:
    """Two random mlx-lm format adapters on olmo2's attention projections, written as `macllm train` does."""
    loaded = load_model(str(olmo2), progress=False)
    paths = loaded.model.lora_paths(None, ["self_attn.q_proj", "self_attn.v_proj"])
    root = tmp_path_factory.mktemp("olmo2-adapters")
    written = {}
    for seed, name in enumerate(("alpha", "beta"), start=1):
        adapter = random_lora(loaded.model, paths, seed=seed)
        adapter.name, adapter.base_model, adapter.base_fingerprint = name, "olmo2", fingerprint(loaded.config)
        written[name] = formats.write_adapter(adapter, root / name, loaded.config.num_hidden_layers)
    return written


def logits(engine: Engine) -> np.ndarray:
    return engine.submit(lambda: np.array(engine.loaded.model(mx.array([PROMPT])))).result(timeout=60)


@pytest.mark.parametrize("arch", ["olmo2", "lfm2"])
def test_multi_turn_chat_reuses_the_prefix_and_equals_a_fresh_conversation(arch, request, capsys):
    folder = request.getfixturevalue(arch)
    with Engine(str(folder), progress=False) as engine:
        assert engine.info.implementation == "mlx-lm"
        conv = engine.new_conversation(system="Be brief.")
        first = engine.chat(conv, "hello", GREEDY).result(timeout=60)
        assert first.stats.prefilled_tokens == first.stats.prompt_tokens
        second = engine.chat(conv, "world", GREEDY).result(timeout=60)
        reused = second.stats.prefilled_tokens <= second.stats.prompt_tokens - first.stats.prompt_tokens + 1
        if arch == "olmo2":  # attention caches trim back to the common prefix
            assert reused and second.stats.prefilled_tokens >= 1
        elif not reused:
            # A random model's answer need not re-tokenize as generated; a recurrent layer then cannot go back
            # to the common prefix, and says so in one line instead of failing.
            assert second.stats.prefilled_tokens == second.stats.prompt_tokens
            assert sum("cannot go back" in line for line in capsys.readouterr().err.splitlines()) == 1
        fresh = engine.new_conversation(system="Be brief.")
        engine.set_messages(fresh, engine.conversation(conv).messages[:3], system="Be brief.")
        assert engine.reply(fresh, GREEDY).result(timeout=60).token_ids == second.token_ids


def test_adapters_swap_blend_and_drop_in_the_engine(olmo2, olmo2_adapters):
    with Engine(str(olmo2), progress=False) as engine:
        base = logits(engine)
        for name, path in olmo2_adapters.items():
            engine.load_adapter(str(path), name=name)
        engine.set_adapters({"alpha": 1.0})
        alpha = logits(engine)
        engine.set_adapters({"beta": 1.0})
        beta = logits(engine)
        engine.set_adapters({"alpha": 0.5, "beta": 0.5})
        blend = logits(engine)
        assert np.abs(alpha - base).max() > 1e-3 and np.abs(beta - alpha).max() > 1e-3
        # A blend is its own output: neither the base nor either adapter alone.
        assert min(np.abs(blend - other).max() for other in (base, alpha, beta)) > 1e-4
        engine.set_adapters({})
        np.testing.assert_allclose(logits(engine), base, atol=1e-5)
        assert engine.adapters["active"] == {} and len(engine.adapters["loaded"]) == 2
        conv = engine.new_conversation()
        engine.set_adapters({"alpha": 1.0})
        assert engine.chat(conv, "hello", GREEDY).result(timeout=60).token_ids


def test_cancel_stops_an_mlx_lm_model_mid_answer(olmo2):
    with Engine(str(olmo2), progress=False) as engine:
        stream = engine.generate(PROMPT, GenerationParams(max_tokens=400, temperature=0.0))
        count, result = 0, None
        for event in stream:
            if isinstance(event, TokenEvent):
                count += 1
                if count == 2:
                    stream.cancel()
            else:
                result = event
        assert result is not None and result.finish_reason in ("cancelled", "stop")
        assert len(result.token_ids) < 400
        # The engine goes on: the next answer is the whole greedy answer.
        again = engine.generate(PROMPT, GREEDY).result(timeout=60)
        assert again.token_ids == our_greedy(load_model(str(olmo2), progress=False), PROMPT, 6)


def test_perplexity_equals_mlx_lm_s_own_logits(olmo2):
    from mlx_lm.utils import load_model as mlx_lm_load_model

    tokens = [1, *((17 * i) % 250 + 5 for i in range(40))]
    ours = perplexity(load_model(str(olmo2), progress=False).model, tokens, context=16, stride=8)
    theirs, _ = mlx_lm_load_model(olmo2)
    total = 0.0
    for begin, end, first in window_starts(len(tokens), 16, 8):  # each window from an empty cache
        window = tokens[begin:end]
        out = theirs(mx.array(window)[None])[0].astype(mx.float32)[first - begin - 1:-1]
        picked = mx.take_along_axis(out, mx.array(window[first - begin:])[:, None], axis=-1)[:, 0]
        total += (mx.logsumexp(out, axis=-1) - picked).sum().item()
    assert ours.tokens == len(tokens) - 1
    assert math.isclose(ours.nll, total / (len(tokens) - 1), rel_tol=1e-4)


def test_train_command_then_fuse_command_on_an_mlx_lm_model(olmo2, tmp_path, home, capsys):
    data = write_repeated(tmp_path / "data")
    code, events, err = train(capsys, "--model", olmo2, "--notes", data, "--name", "olmo-rep",
                              "--iters", 2, "--batch", 2, "--lr", 1e-2, "--warmup", 0)
    assert code == 0, err
    losses = [e["train_loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    adapter_folder = home / "adapters" / "olmo-rep"
    adapter = formats.read_adapter(adapter_folder)
    assert adapter.base_fingerprint == fingerprint(load_model(str(olmo2), progress=False).config)

    with Engine(str(olmo2), progress=False) as engine:
        engine.load_adapter("olmo-rep")
        engine.set_adapters({"olmo-rep": 1.0})
        adapted = engine.generate(PROMPT, GREEDY).result(timeout=60).token_ids
        adapted_logits = logits(engine)

    out = tmp_path / "olmo2-fused"
    assert main(["fuse", "--model", str(olmo2), "--adapter", "olmo-rep", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["model_type"] == "olmo2"
    fused = load_model(str(out), progress=False)
    assert fused.info.implementation == "mlx-lm"
    assert our_greedy(fused, PROMPT, 6) == adapted
    np.testing.assert_allclose(np.array(fused.model(mx.array([PROMPT]))), adapted_logits, atol=1e-4)


def test_an_mlx_lm_alias_loads_and_runs_on_its_target(tmp_path):
    assert mlx_lm_aliases()["falcon_mamba"] == "mamba" and mlx_lm_aliases()["kimi_k2"] == "deepseek_v3"
    assert implementation("falcon_mamba") == implementation("kimi_k2") == "mlx-lm"
    folder = save_mlx_lm_folder("mamba", tmp_path / "falcon-mamba")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "falcon_mamba"}))
    loaded = load_model(str(folder), progress=False)
    assert loaded.info.implementation == "mlx-lm" and loaded.info.architecture == "falcon_mamba"
    # mlx-lm reads the alias itself (falcon_mamba adds RMS norms to mamba): its own generate is the reference.
    assert_same_greedy(our_greedy(loaded, PROMPT), mlx_lm_greedy(folder, PROMPT, GREEDY_TOKENS))


def test_doctor_says_which_architectures_are_our_own(capsys):
    assert main(["doctor", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)["architectures"]
    assert line.startswith("own: llama, mistral, qwen2") and "others through mlx-lm" in line
