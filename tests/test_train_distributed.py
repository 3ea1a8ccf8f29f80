"""Data parallel: two local ranks on MLX's ring backend equal one rank with the combined batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from macllm.lora import formats
from tests.train_helpers import train, write_notes

ENTRY = "import sys\nfrom macllm.cli import main\nsys.exit(main())\n"


def test_two_ring_ranks_equal_one_rank_with_the_combined_batch(tiny_llama_folder, tmp_path, capsys, monkeypatch):
    launcher = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
    if not Path(launcher).exists():
        pytest.skip("mlx.launch is not installed")
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    notes = write_notes(tmp_path / "notes")
    common = ["--model", tiny_llama_folder, "--notes", notes, "--iters", 4, "--val-fraction", 0, "--lr", 5e-3,
              "--save-every", 2]
    code, one, err = train(capsys, *common, "--name", "one", "--out-dir", tmp_path / "single", "--batch", 4)
    assert code == 0, err
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    cmd = [launcher, "--backend", "ring", "-n", "2", "--env", f"MACLLM_HOME={tmp_path / 'home'}", "--",
           sys.executable, str(entry), "train", "--json", *map(str, common), "--name", "two",
           "--out-dir", str(tmp_path / "ring"), "--batch", 2]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert two[0]["event"] == "start" and two[0]["ranks"] == 2
    assert sum(e["event"] == "start" for e in two) == 1  # only rank 0 reports
    steps = lambda events: [e["train_loss"] for e in events if e["event"] == "step"]  # noqa: E731
    assert steps(two) == pytest.approx(steps(one), rel=1e-4)
    a = formats.read_adapter(tmp_path / "single" / "one")
    b = formats.read_adapter(tmp_path / "ring" / "two")
    for module, (wa, wb) in a.weights.items():
        assert float(abs(wa - b.weights[module][0]).max()) < 1e-4
        assert float(abs(wb - b.weights[module][1]).max()) < 1e-4
    assert not (tmp_path / "ring" / ".two.training").exists()
