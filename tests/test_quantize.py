"""Our affine quantizer and GGUF reader agree (Q4_1 reproduced bit for bit); `macllm quantize` output
loads in macllm and mlx-lm alike; an interrupted conversion leaves nothing behind."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from macllm.cli import main
from tests import tiny_models
from tests.conftest import cpu_kernel_off, took_path


def native_triples(path):
    from macllm.formats.gguf_model import load_gguf_model

    _, weights, _, _ = load_gguf_model(path)
    return weights


def assert_q4_1_reproduced(gguf_path, out):
    assert main(["quantize", str(gguf_path), str(out), "--bits", "4", "--group-size", "32", "--json"]) == 0
    ours = mx.load(str(out / "model.safetensors"))
    theirs = native_triples(gguf_path)
    q4 = [n[: -len(".scales")] for n, s in theirs.items()
          if n.endswith(".scales") and theirs[n[: -len(".scales")] + ".weight"].shape[-1] // s.shape[-1] == 4]
    assert q4
    for prefix in q4:
        for part in ("weight", "scales", "biases"):
            name = f"{prefix}.{part}"
            assert mx.array_equal(ours[name], theirs[name]).item(), name


def test_q4_1_requantized_at_4_bit_group_32_is_identical(tmp_path):
    path = tiny_models.write_tiny_gguf(tmp_path / "tiny-q4_1.gguf", quant="q4_1")
    assert_q4_1_reproduced(path, tmp_path / "out")


@pytest.mark.real_model
def test_smollm2_q4_1_reproduced_exactly(smollm_gguf, tmp_path):
    assert_q4_1_reproduced(smollm_gguf, tmp_path / "out")


@pytest.mark.usefixtures("float_activations")
@pytest.mark.parametrize("flags", [["--bits", "4", "--group-size", "64"], ["--bits", "8"], ["--mixed"]])
def test_output_loads_in_macllm_and_mlx_lm_alike(tiny_llama_folder, tmp_path, flags, capsys):
    from mlx_lm import load

    from macllm.loader import load_model

    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_folder), str(out), *flags]) == 0
    config = json.loads((out / "config.json").read_text())
    if "--mixed" in flags:
        assert config["quantization"]["model.layers.0.self_attn.v_proj"]["bits"] == 8
        assert config["quantization"]["model.layers.0.mlp.down_proj"]["bits"] == 8
        assert "8 bits" in capsys.readouterr().err
    with cpu_kernel_off():  # MLX's quantized matmul, as mlx-lm computes
        ours = load_model(str(out), keep_quantized=True, progress=False)
        fast = load_model(str(out), progress=False)
    theirs, _ = load(str(out))
    ids = mx.array([[5, 40, 77, 100, 200, 31]])
    assert mx.allclose(ours.model(ids), theirs(ids), atol=1e-4).item()
    # The default CPU path (our kernel where built) computes the same values in float32, as the float32 path.
    default = load_model(str(out), progress=False)
    assert took_path("default", default.info.compute), default.info.compute
    assert mx.allclose(default.model(ids), fast.model(ids), atol=1e-4).item()


def test_interrupted_conversion_leaves_nothing(tiny_llama_folder, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mx, "save_safetensors", interrupted)
    assert main(["quantize", str(tiny_llama_folder), str(tmp_path / "out")]) == 130  # Ctrl-C mid-write
    assert list(tmp_path.iterdir()) == []  # neither OUT nor its temporary sibling


def test_a_full_disk_mid_write_is_one_line_and_leaves_nothing(tiny_llama_folder, tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise RuntimeError("[write] Unable to write 395996 bytes to file.")  # what MLX raises

    monkeypatch.setattr(mx, "save_safetensors", full_disk)
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_llama_folder), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"could not write {out}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tiny_llama_folder, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert main(["quantize", str(tiny_llama_folder), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_calibrated_conversion_reports_its_method_and_loads(tiny_llama_folder, tmp_path, capsys):
    from macllm.loader import load_model

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Title\n\nSome calibration text about gardens and rivers. " * 20)
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_folder), str(out), "--calibrate", str(notes),
                 "--calibration-tokens", "300", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "importance-weighted search" and 0 < summary["calibration_tokens"] <= 300
    load_model(str(out), progress=False)


def test_bad_calibration_text_is_one_line_exit_2(tiny_llama_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "missing", tmp_path / "empty"):
        assert main(["quantize", str(tiny_llama_folder), str(tmp_path / "q"), "--calibrate", str(where)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "calibrat" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_distill_needs_calibration_text_and_runs_with_it(tiny_llama_folder, tmp_path, capsys):
    assert main(["quantize", str(tiny_llama_folder), str(tmp_path / "q"), "--distill"]) == 2
    assert "--calibrate" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("A short calibration text about rivers, gardens and the weather. " * 30)
    assert main(["quantize", str(tiny_llama_folder), str(tmp_path / "q"), "--calibrate", str(notes),
                 "--distill", "1", "--json"]) == 0
    assert "distilled (1 epochs)" in json.loads(capsys.readouterr().out)["method"]


def test_mixture_of_experts_are_quantized_and_load_in_macllm_and_mlx_lm_alike(tmp_path):
    """The stacked (experts, out, in) projections are quantized too (they are nearly all of an MoE model's
    weights), in mlx-lm's layout: mlx-lm's own Qwen3-MoE class reads our folder and agrees with ours."""
    from mlx_lm import load

    from macllm.loader import load_model
    from tests.test_qwen3 import QWEN3_MOE, mlx_lm_model, save_as_mlx_lm, vocab_config

    config = vocab_config(QWEN3_MOE)
    folder = save_as_mlx_lm(mlx_lm_model(config), config, tmp_path / "moe")
    out = tmp_path / "q"
    assert main(["quantize", str(folder), str(out), "--bits", "4", "--group-size", "32"]) == 0
    stored = mx.load(str(out / "model.safetensors"))
    experts = stored["model.layers.0.mlp.switch_mlp.up_proj.weight"]
    assert experts.dtype == mx.uint32 and experts.shape == (8, 64, 64 * 4 // 32)
    assert stored["model.layers.0.mlp.switch_mlp.up_proj.scales"].shape == (8, 64, 2)
    with cpu_kernel_off():  # MLX's quantized matmul, as mlx-lm computes
        ours = load_model(str(out), keep_quantized=True, progress=False)
    theirs, _ = load(str(out))
    ids = mx.array([[5, 40, 77, 100, 200, 31]])
    assert mx.allclose(ours.model(ids), theirs(ids), atol=1e-4).item()
    float_model = load_model(str(folder), progress=False)
    assert mx.abs(ours.model(ids) - float_model.model(ids)).max().item() < 1.0  # close to the float model
