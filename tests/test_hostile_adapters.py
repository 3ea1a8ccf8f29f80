"""Hostile input to adapters (issue #13, items 8 and 9): out-of-range scales, NaN/inf weights, fusing into a
folder that cannot be written. Each is one line, exit 2 (or one MacllmError), and nothing changes or is
half-written."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from macllm.cli import main
from macllm.engine import Engine
from macllm.errors import MacllmError
from macllm.lora.formats import read_adapter, write_adapter
from macllm.lora.random_adapter import random_adapter
from macllm.lora.weight_bounds import MAX_ADAPTER_WEIGHT
from tests.read_only_folder import read_only

PROMPT = [1, 40, 50, 60, 70, 80, 90, 100]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def one_line(capsys, code, *needles) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("macllm: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


# --- scale bounds (item 9) ------------------------------------------------------------------------------

def generate(*args) -> int:
    return main(["generate", "--json", "--max-tokens", "4", "-p", "hello", *map(str, args)])


@pytest.mark.parametrize("scale", ["1e9", "-1e9", "10.5", "inf"])
def test_cli_adapter_scale_outside_the_range_is_one_line(tiny_llama_folder, good, capsys, scale):
    code = generate("-m", tiny_llama_folder, "-a", f"{good}:{scale}")
    one_line(capsys, code, f"-{MAX_ADAPTER_WEIGHT:g}", f"{MAX_ADAPTER_WEIGHT:g}")


@pytest.mark.parametrize("scale", [MAX_ADAPTER_WEIGHT, -MAX_ADAPTER_WEIGHT, 0.5])
def test_cli_adapter_scale_inside_the_range_works(tiny_llama_folder, good, capsys, scale):
    code = generate("-m", tiny_llama_folder, "-a", f"{good}:{scale}")
    assert code == 0, capsys.readouterr().err


def test_set_adapters_refuses_a_scale_outside_the_range_and_keeps_the_active_set(tiny_llama_folder, good):
    with Engine(str(tiny_llama_folder), progress=False) as e:
        e.load_adapter(str(good))
        e.set_adapters({"good": 0.5})
        before = e.submit(lambda: np.array(e.loaded.model(mx.array([PROMPT])))).result()
        for weight in (1e9, -1e9, MAX_ADAPTER_WEIGHT + 0.01):
            with pytest.raises(MacllmError, match=f"between -{MAX_ADAPTER_WEIGHT:g} and {MAX_ADAPTER_WEIGHT:g}"):
                e.set_adapters({"good": weight})
            assert e.adapters["active"] == {"good": 0.5}
        after = e.submit(lambda: np.array(e.loaded.model(mx.array([PROMPT])))).result()
        assert np.array_equal(before, after)


def test_fuse_refuses_a_scale_outside_the_range_and_writes_nothing(tiny_llama_folder, good, tmp_path, capsys):
    out = tmp_path / "fused"
    code = main(["fuse", "-m", str(tiny_llama_folder), "-a", f"{good}:1e9", "--out", str(out)])
    one_line(capsys, code, f"{MAX_ADAPTER_WEIGHT:g}")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]


def test_tui_blend_keys_stop_at_the_bound():
    from tui.screens.adapters import AdaptersScreen

    panel = AdaptersScreen([{"name": "good"}], {"good": MAX_ADAPTER_WEIGHT - 0.25}, None)
    panel.selected = lambda: "good"  # type: ignore[method-assign]  # no table: the screen is not mounted
    panel.redraw = lambda: None  # type: ignore[method-assign]
    for _ in range(5):
        panel.action_scale(+1)
    assert panel.blend == {"good": MAX_ADAPTER_WEIGHT}


# --- NaN / inf weights (item 9) --------------------------------------------------------------------------

def poisoned(good: Path, tmp_path: Path, value: float, tensor: str) -> Path:
    out = tmp_path / f"poisoned-{value}"
    shutil.copytree(good, out)
    tensors = dict(mx.load(str(out / "adapters.safetensors")))
    bad = np.array(tensors[tensor])
    bad.flat[3] = value
    tensors[tensor] = mx.array(bad)
    mx.save_safetensors(str(out / "adapters.safetensors"), tensors)
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_an_adapter_with_non_finite_weights_is_refused_naming_the_tensor(tiny_llama_folder, good, tmp_path,
                                                                         capsys, value):
    tensor = "model.layers.1.mlp.up_proj.lora_b"
    bad = poisoned(good, tmp_path, value, tensor)
    with pytest.raises(MacllmError, match=tensor.replace(".", r"\.")):
        read_adapter(bad)
    one_line(capsys, generate("-m", tiny_llama_folder, "-a", str(bad)), tensor, "NaN or infinite")
    with Engine(str(tiny_llama_folder), progress=False) as e:
        with pytest.raises(MacllmError, match="NaN or infinite"):
            e.load_adapter(str(bad))
        assert e.adapters == {"loaded": [], "active": {}}


def test_a_non_finite_scale_in_the_config_is_refused(good, tmp_path):
    config = json.loads((good / "adapter_config.json").read_text())
    config["lora_parameters"]["scale"] = float("nan")  # json writes NaN, and Python's reader takes it back
    (good / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MacllmError, match="scale"):
        read_adapter(good)


def test_adapters_list_shows_a_poisoned_adapter_as_damaged(good, tmp_path, home, capsys):
    bad = poisoned(good, tmp_path, float("nan"), "model.layers.0.self_attn.q_proj.lora_a")
    shutil.copytree(bad, home / "adapters" / "nan")
    assert main(["adapters", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "NaN or infinite" in rows["nan"]["error"]


# --- fuse into a folder that cannot be written (item 8) --------------------------------------------------

def test_fuse_under_a_file_is_one_line_and_writes_nothing(tiny_llama_folder, good, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code = main(["fuse", "-m", str(tiny_llama_folder), "-a", str(good), "--out", str(blocker / "fused")])
    one_line(capsys, code, str(blocker), "not a folder")
    assert blocker.read_text() == "keep me"


def test_fuse_into_a_read_only_folder_is_one_line_and_writes_nothing(tiny_llama_folder, good, tmp_path, capsys,
                                                                     monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(monkeypatch, locked)
    code = main(["fuse", "-m", str(tiny_llama_folder), "-a", str(good), "--out", str(locked / "fused")])
    one_line(capsys, code, str(locked), "not writable")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_fuse_into_a_chmod_read_only_folder(tiny_llama_folder, good, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        code = main(["fuse", "-m", str(tiny_llama_folder), "-a", str(good), "--out", str(locked / "fused")])
        one_line(capsys, code, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[write] Unable to write 395996 bytes to file.")])  # MLX's own
def test_fuse_failing_part_way_leaves_nothing_behind(tiny_llama_folder, good, tmp_path, capsys, monkeypatch,
                                                     failure):
    real_save = mx.save_safetensors

    def full_disk(path, *args, **kwargs):
        if str(path).endswith("model.safetensors"):
            raise failure
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", full_disk)
    out = tmp_path / "fused"
    code = main(["fuse", "-m", str(tiny_llama_folder), "-a", str(good), "--out", str(out)])
    one_line(capsys, code, str(out), "write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]  # no half folder, no hidden leftover


def test_an_adapter_with_nan_weights_is_never_written(tiny_cfg, tmp_path):
    a = random_adapter(tiny_cfg, "diverged", rank=4, seed=1)
    module = "model.layers.0.mlp.down_proj"
    a.weights[module] = (a.weights[module][0], mx.full(a.weights[module][1].shape, float("nan")))
    with pytest.raises(MacllmError, match=f"{module}.lora_b holds NaN"):
        write_adapter(a, tmp_path / "diverged", tiny_cfg.num_hidden_layers)
    assert list(tmp_path.iterdir()) == []
