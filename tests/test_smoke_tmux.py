"""The real app in a real terminal: scripts/smoke_tmux.sh drives `macllm` in tmux on SmolLM2 (~5 s): an answer,
the token inspector, the train screen and the help."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TEST_HOME

REPO = Path(__file__).resolve().parents[1]


def tmux_available() -> bool:
    """Installed, or installable: the script apt-gets tmux itself when it runs as root (as CI does)."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return shutil.which("tmux") is not None or (as_root and shutil.which("apt-get") is not None)


@pytest.mark.real_model
@pytest.mark.skipif(not tmux_available(), reason="tmux is not installed (and this is not root with apt-get)")
def test_smoke_in_tmux(smollm_gguf):
    # The same model cache as the smollm_gguf fixture, so the script's pull finds the model there.
    env = {**os.environ, "MACLLM_HOME": str(TEST_HOME)}
    run = subprocess.run(["bash", str(REPO / "scripts" / "smoke_tmux.sh")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "OK:" in run.stderr
