#!/usr/bin/env python3
"""How long `macllm` takes to start, as a person sees it.

Launches the app (default model, already downloaded) in a detached tmux at 120x40 and reads the screen
every 50 ms: "input_visible" is when the first screen is drawn (the status bar names the model),
"model_ready" when the status bar no longer says "(loading…)". Median of --runs runs, printed as JSON.

The model is pulled into $MACLLM_HOME first (not timed); each run uses a fresh home that borrows only
that models folder, so saved chats do not change what is drawn.

    .venv/bin/python scripts/bench_startup.py [--runs 5] [--macllm .venv/bin/macllm]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"  # the default model; the app is started without naming it
GOAL_S = 3.0
POLL_S = 0.05


class Tmux:
    """A tmux server of our own (its socket in `folder`), so stopping it touches nothing else."""

    def __init__(self, folder: Path) -> None:
        self.socket = str(folder / "tmux.sock")

    def __call__(self, *args: str) -> str:
        # -f /dev/null: the user's tmux.conf does not change what is measured.
        done = subprocess.run(["tmux", "-S", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True)
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "bench")

    def stop(self) -> None:
        self("kill-server")


def one_run(macllm: str, models: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "models").symlink_to(models)
        tmux = Tmux(Path(home))
        exit_file = Path(home) / "exit-code"
        command = f"env MACLLM_HOME='{home}' LANG=C.UTF-8 '{macllm}' chat; echo $? > '{exit_file}'"
        try:
            start = time.perf_counter()
            # The pane stays after the app exits, so a crash leaves its message readable.
            tmux("new-session", "-d", "-s", "bench", "-x", "120", "-y", "40", command, ";",
                 "set-option", "-t", "bench", "remain-on-exit", "on")
            visible = None
            while time.perf_counter() - start < timeout:
                text = tmux.screen()
                now = time.perf_counter() - start
                if MODEL in text:
                    visible = visible or now
                    if "(loading" not in text:
                        return {"input_visible_s": round(visible, 3), "model_ready_s": round(now, 3)}
                if "(not loaded)" in text or "Choose a model" in text:
                    raise RuntimeError(f"the model did not load:\n{text}")
                if exit_file.exists():
                    raise RuntimeError(f"the app exited before it was ready:\n{text}")
                time.sleep(POLL_S)
            raise RuntimeError(f"not ready after {timeout:.0f} s:\n{tmux.screen()}")
        finally:
            tmux("send-keys", "-t", "bench", "C-q")
            time.sleep(0.3)  # let it quit cleanly before the server goes
            tmux.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--macllm", default=str(REPO / ".venv" / "bin" / "macllm"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one start")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("bench_startup: tmux is missing (apt-get install tmux, brew install tmux)", file=sys.stderr)
        return 1

    subprocess.run([args.macllm, "pull", MODEL], check=True, stdout=subprocess.DEVNULL)
    from macllm.paths import models_dir  # the same $MACLLM_HOME the pull used

    runs = [one_run(args.macllm, models_dir(), args.timeout) for _ in range(args.runs)]
    result = {"model": MODEL, "terminal": "tmux 120x40", "runs": args.runs, "poll_s": POLL_S, "goal_s": GOAL_S}
    for key in ("input_visible_s", "model_ready_s"):
        values = [r[key] for r in runs]
        result[key] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values),
                       "all": values}
    result["goal_met"] = result["model_ready_s"]["median"] <= GOAL_S
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
