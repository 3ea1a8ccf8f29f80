"""Adapter store, listing, base fingerprints, bad input (nothing half-loaded), CLI flags and fuse."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from macllm.cli import main
from macllm.engine import Engine
from macllm.errors import MacllmError
from macllm.lora.formats import write_adapter
from macllm.lora.random_adapter import random_adapter

PROMPT = [1, 40, 50, 60, 70, 80, 90, 100]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def copy_with(good, tmp_path, name, config=None, tensors=None):
    """A damaged copy of `good`: a new config dict, or new tensors, or both."""
    out = tmp_path / name
    shutil.copytree(good, out)
    if config is not None:
        (out / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if tensors is not None:
        mx.save_safetensors(str(out / "adapters.safetensors"), tensors)
    return out


def bad_adapters(good, tmp_path, tiny_cfg):
    cfg = json.loads((good / "adapter_config.json").read_text())
    tensors = mx.load(str(good / "adapters.safetensors"))
    truncated = copy_with(good, tmp_path, "truncated")
    data = (truncated / "adapters.safetensors").read_bytes()
    (truncated / "adapters.safetensors").write_bytes(data[: len(data) // 2])
    no_config = copy_with(good, tmp_path, "no-config")
    (no_config / "adapter_config.json").unlink()
    other = dict(cfg, macllm=dict(cfg["macllm"], base_fingerprint="qwen2-d896-l24-v151936-deadbeef",
                                  base_model="Qwen2-0.5B"))
    rank = dict(cfg, lora_parameters=dict(cfg["lora_parameters"], rank=8))
    extra = {**tensors, "model.layers.7.self_attn.q_proj.lora_a": tensors["model.layers.0.self_attn.q_proj.lora_a"],
             "model.layers.7.self_attn.q_proj.lora_b": tensors["model.layers.0.self_attn.q_proj.lora_b"]}
    norm = {**tensors, "model.layers.0.input_layernorm.lora_a": mx.zeros((64, 4)),
            "model.layers.0.input_layernorm.lora_b": mx.zeros((4, 64))}
    wide = {k: (mx.zeros((32, 4)) if k.endswith("q_proj.lora_a") else v) for k, v in tensors.items()}
    unfingerprinted = dict(cfg, macllm={})
    return {
        "another base": (copy_with(good, tmp_path, "other", other), "made for Qwen2-0.5B"),
        "truncated safetensors": (truncated, "truncated or damaged"),
        "missing config": (no_config, "has no adapter_config.json"),
        "malformed config": (copy_with(good, tmp_path, "malformed", "{rank: 8"), "not valid JSON"),
        "config without lora_parameters": (copy_with(good, tmp_path, "nolp", {"num_layers": 2}), "lora_parameters"),
        "rank mismatch": (copy_with(good, tmp_path, "rank", rank), "config says rank 8"),
        "unknown layer": (copy_with(good, tmp_path, "extra", tensors=extra), "model.layers.7.self_attn.q_proj"),
        "not a linear layer": (copy_with(good, tmp_path, "norm", tensors=norm), "not a linear layer"),
        "shape mismatch": (copy_with(good, tmp_path, "wide", unfingerprinted, wide), "does not fit"),
        "missing half": (copy_with(good, tmp_path, "half", tensors={k: v for k, v in tensors.items()
                                                                  if not k.endswith("0.mlp.up_proj.lora_b")}),
                         "only one of its two"),
        "no such adapter": (tmp_path / "does-not-exist", "no adapter named"),
    }


def test_bad_adapters_fail_with_one_line_and_change_nothing(tiny_llama_folder, good, tmp_path, tiny_cfg, home):
    cases = bad_adapters(good, tmp_path, tiny_cfg)
    garbage = copy_with(good, tmp_path, "garbage")
    (garbage / "adapters.safetensors").write_bytes(b"\x00" * 200)
    cases["garbage safetensors"] = (garbage, "cannot read")
    with Engine(str(tiny_llama_folder), progress=False) as e:
        e.load_adapter(str(good))
        e.set_adapters({"good": 0.5})
        before_state = e.adapters
        before = e.submit(lambda: np.array(e.loaded.model(mx.array([PROMPT])))).result()
        for what, (path, needle) in cases.items():
            with pytest.raises(MacllmError) as info:
                e.load_adapter(str(path))
            message = str(info.value)
            assert "\n" not in message, what
            assert needle in message, (what, message)
            assert e.adapters == before_state, what
        after = e.submit(lambda: np.array(e.loaded.model(mx.array([PROMPT])))).result()
        assert np.array_equal(before, after)
        with pytest.raises(MacllmError, match="not loaded"):
            e.set_adapters({"good": 1.0, "nope": 1.0})
        with pytest.raises(MacllmError, match="finite"):
            e.set_adapters({"good": float("nan")})
        assert e.adapters["active"] == {"good": 0.5}


def test_an_adapter_for_another_architecture_is_refused(tiny_qwen2_folder, good):
    with Engine(str(tiny_qwen2_folder), progress=False) as e:
        with pytest.raises(MacllmError, match=r"was made for tiny-llama \(llama-d64-l2-.*the loaded model is"):
            e.load_adapter(str(good))
        assert e.adapters == {"loaded": [], "active": {}}


def test_fingerprint_is_the_same_for_gguf_and_folder(tiny_llama_gguf, tiny_llama_folder):
    from macllm.loader import load_model
    from macllm.lora.store import fingerprint

    a = fingerprint(load_model(str(tiny_llama_gguf), progress=False).config)
    assert a == fingerprint(load_model(str(tiny_llama_folder), progress=False).config)
    assert a.startswith("llama-d64-l2-v")


def test_store_names_and_listing(good, home, tiny_llama_folder, capsys):
    from macllm.lora.store import list_adapters, resolve

    shutil.copytree(good, home / "adapters" / "mine")
    broken = home / "adapters" / "broken"
    broken.mkdir(parents=True)
    (broken / "adapter_config.json").write_text("{")
    assert resolve("mine") == home / "adapters" / "mine"
    rows = {r["name"]: r for r in list_adapters()}
    mine = rows["mine"]
    assert mine["where"] == "user" and mine["rank"] == 4 and mine["layers"] == "0-1"
    assert mine["base_model"] == "tiny-llama" and mine["size_bytes"] > 0 and mine["created"]
    assert "not valid JSON" in rows["broken"]["error"]
    assert main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "BASE", "RANK", "LAYERS", "SIZE", "CREATED", "TRAINING"]
    assert "mine" in out and "damaged" in out
    assert main(["adapters", "list", "--json"]) == 0
    assert any(r["name"] == "mine" for r in json.loads(capsys.readouterr().out))


def generate(capsys, *args):
    code = main(["generate", "--json", "--max-tokens", "6", "-p", "hello", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_generate_takes_adapters_by_name_and_scale(tiny_llama_folder, good, home, capsys):
    shutil.copytree(good, home / "adapters" / "mine")
    _, base, _ = generate(capsys, "-m", tiny_llama_folder)
    _, zero, _ = generate(capsys, "-m", tiny_llama_folder, "--adapter", "mine:0")
    assert zero["token_ids"] == base["token_ids"]
    code, blended, err = generate(capsys, "-m", tiny_llama_folder, "-a", "mine:0.5", "-a", str(good))
    assert code == 0, err
    with Engine(str(tiny_llama_folder), progress=False) as e:
        e.load_adapter("mine")
        e.load_adapter(str(good))
        e.set_adapters({"mine": 0.5, "good": 1.0})
        from macllm.generation import GenerationParams

        expected = e.generate("hello", GenerationParams(max_tokens=6)).result().token_ids
    assert blended["token_ids"] == expected


@pytest.mark.parametrize("spec, needle", [("nothing-here", "no adapter named 'nothing-here'"),
                                          ("mine:x", "must be a number"), ("mine:1:2", "no adapter named")])
def test_cli_bad_adapter_is_one_line_exit_2(tiny_llama_folder, good, home, capsys, spec, needle):
    shutil.copytree(good, home / "adapters" / "mine")
    code, _, err = generate(capsys, "-m", tiny_llama_folder, "--adapter", spec)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("macllm: error:")]  # (a notice may precede)
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("quantize", [None, {"bits": 8, "group_size": 32}])
def test_fuse_matches_the_unfused_adapter(tmp_path, tiny_cfg, home, capsys, quantize):
    from tests.tiny_models import write_tiny_folder

    base = write_tiny_folder(tmp_path / "base", quantize=quantize)
    adapter = write_adapter(random_adapter(tiny_cfg, "a", rank=4, seed=2, b_std=0.3), tmp_path / "a",
                            tiny_cfg.num_hidden_layers)
    out = tmp_path / "fused"
    assert main(["fuse", "-m", str(base), "--adapter", f"{adapter}:0.8", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(["fuse", "-m", str(base), "--adapter", str(adapter), "--out", str(out)]) == 2  # never overwrites

    def run(folder, adapters):
        with Engine(str(folder), keep_quantized=bool(quantize), progress=False) as e:
            for name, scale in adapters.items():
                e.load_adapter(str(adapter), name=name)
                e.set_adapters({name: scale})
            return e.submit(lambda: np.array(e.loaded.model(mx.array([PROMPT])))).result()

    unfused, fused, plain = run(base, {"a": 0.8}), run(out, {}), run(base, {})
    assert not np.allclose(unfused, plain, atol=1e-2)
    if quantize is None:
        np.testing.assert_allclose(fused, unfused, atol=2e-4)
    else:  # re-quantizing W + delta rounds again: small next to what the adapter changes
        effect, error = np.abs(unfused - plain).max(), np.abs(fused - unfused).max()
        assert error < 0.1 * effect
        assert (fused.argmax(-1) == unfused.argmax(-1)).all()
    if quantize:
        config = json.loads((out / "config.json").read_text())
        assert config["quantization"]["bits"] == 8
        assert "model.layers.0.self_attn.q_proj.scales" in mx.load(str(out / "model.safetensors"))
