"""Fine-tune an adapter on a notes folder, without leaving the app.

Training runs as `macllm train --json` in a child process (its own MLX, its own memory), and this
screen draws from the JSON events it prints, read asynchronously so chatting goes on meanwhile. The
screen is installed on the app, so leaving it (Esc) keeps the run and its progress. Cancel sends
SIGINT: the child saves a checkpoint and exits, and the same name can be resumed from the command line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import tempfile
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DirectoryTree, Footer, Input, Label, ProgressBar

from tui.widgets.loss_plot import LossPlot


def _clock(seconds) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class TrainScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back to chat"),
        Binding("ctrl+g", "start", "Start"),
        Binding("f4", "cancel", "Cancel training"),
    ]
    DEFAULT_CSS = """
    TrainScreen #train-main { height: 1fr; }
    TrainScreen #notes-tree { width: 40%; border-right: tall $panel; }
    TrainScreen #train-form { width: 1fr; padding: 0 1; }
    TrainScreen #params Input { width: 1fr; }
    TrainScreen #params { height: auto; }
    TrainScreen #buttons { height: auto; margin: 1 0; }
    TrainScreen #train-status { height: auto; color: $text-muted; }
    TrainScreen #train-error { color: $error; height: auto; }
    """

    def __init__(self, start_dir: Path | None = None) -> None:
        super().__init__()
        self.start_dir = Path(start_dir or Path.home())
        self.folder: Path | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self.finished: dict | None = None  # the done event of the last run

    def compose(self) -> ComposeResult:
        with Horizontal(id="train-main"):
            yield DirectoryTree(self.start_dir, id="notes-tree")
            with Vertical(id="train-form"):
                yield Label("Pick a notes folder on the left.", id="folder-label")
                yield Input(placeholder="adapter name, e.g. my-notes", id="name")
                with Horizontal(id="params"):
                    yield Input("2", placeholder="epochs", id="epochs", tooltip="epochs")
                    yield Input("8", placeholder="rank", id="rank", tooltip="LoRA rank")
                    yield Input("2e-4", placeholder="learning rate", id="lr", tooltip="peak learning rate")
                with Horizontal(id="buttons"):
                    yield Button("Start", id="start", variant="primary")
                    yield Button("Cancel", id="cancel", variant="error", disabled=True)
                yield ProgressBar(total=None, show_eta=False, id="progress")
                yield Label("", id="train-status")
                yield Label("", id="train-error")
                yield LossPlot(id="loss-plot")
        yield Footer()

    # --- choosing ---------------------------------------------------------------------------
    @on(DirectoryTree.DirectorySelected)
    def folder_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.choose_folder(event.path)

    def choose_folder(self, path: Path) -> None:
        self.folder = Path(path)
        self.query_one("#folder-label", Label).update(f"Notes: {self.folder}")
        name = self.query_one("#name", Input)
        if not name.value:
            name.value = self.folder.name.lower().replace(" ", "-")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def command(self) -> list[str]:
        """The child process: this Python, this model, the form's values."""
        app = self.app
        value = lambda wid: self.query_one(f"#{wid}", Input).value.strip()  # noqa: E731
        cmd = [sys.executable, "-m", "macllm.cli", "train", "--json", "--model", str(app.model_source),
               "--notes", str(self.folder), "--name", value("name"), "--epochs", value("epochs") or "2",
               "--rank", value("rank") or "8", "--lr", value("lr") or "2e-4"]
        if getattr(app, "keep_quantized", False):
            cmd.append("--keep-quantized")
        return cmd + list(getattr(app, "train_extra_args", []))

    # --- running ----------------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.running:
            return
        if self.folder is None:
            self.show_error("Pick a notes folder first.")
            return
        if not self.query_one("#name", Input).value.strip():
            self.show_error("Give the adapter a name.")
            return
        self.show_error("")
        self.events, self.finished = [], None
        self.query_one(LossPlot).reset()
        self.query_one("#progress", ProgressBar).update(total=None, progress=0)
        self.set_running(True)
        self.run_training(self.command())

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGINT)  # the trainer saves a checkpoint, then exits
            self.query_one("#train-status", Label).update("Stopping: saving a checkpoint…")

    def action_back(self) -> None:
        self.app.pop_screen()

    def set_running(self, running: bool) -> None:
        self.query_one("#start", Button).disabled = running
        self.query_one("#cancel", Button).disabled = not running

    @work(exclusive=True, group="train", exit_on_error=False)
    async def run_training(self, cmd: list[str]) -> None:
        with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty child never blocks
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=stderr, stdin=asyncio.subprocess.DEVNULL)
            async for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("{"):
                    try:
                        self.handle_event(json.loads(line))
                    except json.JSONDecodeError:
                        pass
            code = await self.proc.wait()
            stderr.seek(0)
            tail = stderr.read().decode("utf-8", "replace").strip().splitlines()
        self.set_running(False)
        if code not in (0, 130) and not any(e["event"] == "error" for e in self.events):
            self.show_error(tail[-1] if tail else f"training exited with code {code}")

    def handle_event(self, event: dict) -> None:
        """Draw one event of `macllm train --json` (see docs/training.md)."""
        self.events.append(event)
        kind = event.get("event")
        status = self.query_one("#train-status", Label)
        bar = self.query_one("#progress", ProgressBar)
        plot = self.query_one(LossPlot)
        if kind == "start":
            d = event["data"]
            bar.update(total=event["total_iters"], progress=event.get("resumed_from") or 0)
            status.update(f"{d['train_chunks']} chunks from {d.get('train_files', d['files'])} notes, "
                          f"{d['train_tokens']} tokens · {event['total_iters']} steps · loading…")
        elif kind == "step":
            bar.update(total=event["total"], progress=event["iteration"])
            plot.add_train(event["train_loss"])
            status.update(f"step {event['iteration']}/{event['total']} · ETA {_clock(event['eta_s'])} · "
                          f"loss {event['train_loss']:.3f} · {event['tokens_per_sec']:.0f} tok/s · "
                          f"{event['peak_memory_mb']:.0f} MB")
        elif kind == "eval":
            plot.add_val(event["val_loss"])
        elif kind == "stopped":
            status.update(f"Stopped at step {event['iteration']}; checkpoint kept. Resume with "
                          f"`macllm train … --resume`.")
        elif kind == "done":
            self.finished = event
            s = event["summary"]
            bar.update(progress=bar.total or 0)
            ppl = (f" · validation perplexity {s['val_ppl_before']:.2f} → {s['val_ppl_after']:.2f}"
                   if s.get("val_ppl_before") is not None else "")
            status.update(f"Done: {event['name']} · {s['steps']} steps · loss {s['train_loss']}{ppl}")
            self.app.trained_adapter = event["name"]
            self.app.notify(f"Adapter {event['name']!r} is ready. Press F3 to use it.", title="Training done",
                            timeout=15)
        elif kind == "error":
            self.show_error(event["message"])

    def show_error(self, message: str) -> None:
        self.query_one("#train-error", Label).update(message)
