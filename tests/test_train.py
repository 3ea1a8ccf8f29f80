"""`macllm train` on a tiny random model: learning, events, resume, Ctrl-C, the adapter it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from macllm.lora import formats
from macllm.tuner import checkpoint
from tests.train_helpers import train, write_notes, write_repeated


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_loss_falls_on_a_repeated_example(tiny_llama_folder, tmp_path, capsys):
    data = write_repeated(tmp_path / "data")
    code, events, err = train(capsys, "--model", tiny_llama_folder, "--notes", data, "--name", "rep",
                              "--iters", 30, "--batch", 2, "--lr", 1e-2, "--warmup", 0)
    assert code == 0, err
    losses = [e["train_loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0], losses


def test_event_stream_parses_and_ends_with_done(tiny_llama_folder, tmp_path, home, capsys):
    notes = write_notes(tmp_path / "notes")
    code, events, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "mine",
                              "--epochs", 2, "--batch", 2, "--lr", 5e-3, "--val-fraction", 0.25,
                              "--patience", 50)
    assert code == 0, err
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert {"step", "eval", "checkpoint"} <= set(kinds)
    step = next(e for e in events if e["event"] == "step")
    for key in ("iteration", "total", "train_loss", "learning_rate", "tokens_per_sec", "peak_memory_mb", "eta_s"):
        assert key in step
    start = events[0]
    assert start["data"]["valid_files"] == 2 and start["data"]["train_files"] == 6
    done = events[-1]
    folder = home / "adapters" / "mine"
    assert done["adapter"] == str(folder)
    summary = done["summary"]
    assert summary["steps"] == start["total_iters"]
    assert summary["val_ppl_after"] < summary["val_ppl_before"]
    assert summary["data"]["files"] == 8 and summary["data"]["tokens"] > 0
    # The adapter: mlx-lm format, training summary in its config, no work folder left behind.
    adapter = formats.read_adapter(folder)
    assert adapter.training["base_fingerprint"] == adapter.base_fingerprint
    assert not checkpoint.work_dir(folder).exists()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["lora_parameters"]["rank"] == 8 and config["fine_tune_type"] == "lora"


def test_trained_adapter_loads_into_the_engine_and_changes_output(tiny_llama_folder, tmp_path, capsys):
    from macllm.engine import Engine
    from macllm.generation import GenerationParams

    data = write_repeated(tmp_path / "data")
    code, _, err = train(capsys, "--model", tiny_llama_folder, "--notes", data, "--name", "rep",
                         "--iters", 20, "--batch", 2, "--lr", 1e-2)
    assert code == 0, err
    with Engine(str(tiny_llama_folder), progress=False) as engine:
        params = GenerationParams(max_tokens=8)
        base = engine.generate("hello", params).result().token_ids
        engine.load_adapter("rep")
        engine.set_adapters({"rep": 1.0})
        tuned = engine.generate("hello", params).result().token_ids
    assert tuned != base


def _interrupt_at(step):
    """An event sink that sends this process SIGINT after `step` (the trainer's handler catches it)."""
    events = []

    def emit(event):
        events.append(event)
        if event["event"] == "step" and event["iteration"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return emit, events


def test_resume_continues_step_count_and_loss(tiny_llama_folder, tmp_path, home):
    from macllm.tuner.session import RunOptions, run_training
    from macllm.tuner.train import TrainConfig

    data = write_repeated(tmp_path / "data", copies=12)
    cfg = TrainConfig(iters=10, batch=2, lr=5e-3, save_every=100)

    straight = []
    assert run_training(RunOptions(str(tiny_llama_folder), data, "a"), cfg, straight.append) == 0
    emit, first = _interrupt_at(4)
    assert run_training(RunOptions(str(tiny_llama_folder), data, "b"), cfg, emit) == 130
    assert first[-1]["event"] == "stopped" and first[-1]["iteration"] == 4
    assert not (home / "adapters" / "b").exists()  # only a checkpoint so far
    second = []
    assert run_training(RunOptions(str(tiny_llama_folder), data, "b", resume=True), cfg, second.append) == 0
    assert second[0]["resumed_from"] == 4
    resumed = [e for e in second if e["event"] == "step"]
    assert [e["iteration"] for e in resumed] == list(range(5, 11))
    want = {e["iteration"]: e["train_loss"] for e in straight if e["event"] == "step"}
    for e in resumed:
        assert e["train_loss"] == pytest.approx(want[e["iteration"]], rel=1e-4, abs=1e-4)
    a = formats.read_adapter(home / "adapters" / "a")
    b = formats.read_adapter(home / "adapters" / "b")
    for module, (wa, wb) in a.weights.items():
        assert float(abs(wa - b.weights[module][0]).max()) < 1e-4
        assert float(abs(wb - b.weights[module][1]).max()) < 1e-4


def test_sigint_leaves_a_loadable_checkpoint(tiny_llama_folder, tmp_path, home):
    from macllm.loader import load_model
    from macllm.lora.manager import AdapterManager

    notes = write_notes(tmp_path / "notes")
    env = {**os.environ, "MACLLM_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "macllm.cli", "train", "--json", "--model", str(tiny_llama_folder),
                             "--notes", str(notes), "--name", "cut", "--iters", "100000", "--batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "step" and events[-1]["iteration"] >= 3:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    stopped = events[-1]
    assert stopped["event"] == "stopped" and stopped["checkpoint"]
    adapter = formats.read_adapter(checkpoint.latest(checkpoint.work_dir(home / "adapters" / "cut")))
    loaded = load_model(str(tiny_llama_folder), progress=False)
    AdapterManager(loaded.model, loaded.config).load(adapter)  # fits the base: shapes and fingerprint
    assert not (home / "adapters" / "cut").exists()


def test_grad_checkpoint_gives_the_same_losses(tiny_llama_folder, tmp_path, capsys):
    data = write_repeated(tmp_path / "data")
    runs = []
    for extra in ([], ["--grad-checkpoint"]):
        code, events, err = train(capsys, "--model", tiny_llama_folder, "--notes", data, "--name", f"g{len(runs)}",
                                  "--iters", 5, "--batch", 2, "--lr", 1e-2, *extra)
        assert code == 0, err
        runs.append([e["train_loss"] for e in events if e["event"] == "step"])
    assert runs[0] == pytest.approx(runs[1], rel=1e-4)
