"""Fine-tune an adapter on a notes folder, without leaving the app.

Training runs as `macllm train --json` in a child process (its own MLX, its own memory), and this
screen draws from the JSON events it prints, read asynchronously so chatting goes on meanwhile. The
screen is installed on the app, so leaving it (Esc) keeps the run and its progress. Cancel sends
SIGINT: the child saves a checkpoint and exits, and the same name can be resumed from the command line.

The notes folder is typed (any path, hidden folders too) or picked in the tree, which starts at the
folder chosen in the notes panel, else the current folder.
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
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DirectoryTree, Footer, Input, Label, ProgressBar

from tui.keymap import bindings
from tui.state import AppState
from tui.widgets.folder_tree import FolderTree
from tui.widgets.loss_plot import LossPlot

PARAMS = (  # (input id and `macllm train` option, label, default, type)
    ("epochs", "Epochs", "2", float),
    ("rank", "LoRA rank", "8", int),
    ("lr", "Learning rate", "2e-4", float),
)


def _clock(seconds) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def folder_problem(text: str) -> str | None:
    """Why `text` cannot be the notes folder, in one line; None when it can."""
    if not text:
        return "Pick a notes folder first: type its path or choose it in the tree."
    if not Path(text).expanduser().is_dir():
        return f"{text}: not a folder"
    return None


def train_command(model: str, folder: Path, name: str, params: dict[str, str], keep_quantized: bool) -> list[str]:
    """The child process: this Python running `macllm train --json` with the form's values."""
    cmd = [sys.executable, "-m", "macllm.cli", "train", "--json", "--model", model, "--notes", str(folder),
           "--name", name]
    for key, value in params.items():
        cmd += [f"--{key}", value]
    return cmd + (["--keep-quantized"] if keep_quantized else [])


def retrain_command(name: str) -> list[str]:
    """The child process for the adapters panel's R: the adapter's own model, folder and options."""
    return [sys.executable, "-m", "macllm.cli", "train", "--json", "--retrain", name]


class TrainScreen(Screen):
    SCOPE = "train"
    BINDINGS = bindings(SCOPE)
    DEFAULT_CSS = """
    TrainScreen #train-main { height: 1fr; }
    TrainScreen #chooser { width: 40%; border-right: tall $panel; padding: 0 1; }
    TrainScreen #folder-message { color: $error; height: 1; }
    TrainScreen #notes-tree { height: 1fr; }
    TrainScreen #train-form { width: 1fr; padding: 0 1; }
    TrainScreen .param { width: 1fr; height: auto; }
    TrainScreen #params { height: auto; }
    TrainScreen #buttons { height: auto; margin: 1 0; }
    TrainScreen #train-status { height: auto; color: $text-muted; }
    TrainScreen #train-error { color: $error; height: auto; }
    """

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state
        self.folder: Path | None = self.notes_panel_folder()
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self.finished: dict | None = None  # the done event of the last run
        self.pending_retrain: str | None = None  # set by the adapters panel's R; started when shown

    def compose(self) -> ComposeResult:
        with Horizontal(id="train-main"):
            with Vertical(id="chooser"):
                yield Label("Notes folder: type a path or pick one below")
                yield Input(str(self.folder or ""), placeholder="e.g. ~/notes", id="folder-path")
                yield Label("", id="folder-message")
                yield FolderTree(self.folder or Path.cwd(), id="notes-tree")
            with Vertical(id="train-form"):
                yield Label(f"Notes: {self.folder}" if self.folder else "No notes folder yet.", id="folder-label")
                yield Label("Adapter name")
                yield Input(self.default_name(), placeholder="e.g. my-notes", id="name")
                with Horizontal(id="params"):
                    for key, label, default, kind in PARAMS:
                        with Vertical(classes="param"):
                            yield Label(label)
                            yield Input(default, id=key, type="integer" if kind is int else "number")
                with Horizontal(id="buttons"):
                    yield Button("Start", id="start", variant="primary")
                    yield Button("Cancel", id="cancel", variant="error", disabled=True)
                progress = ProgressBar(total=None, show_eta=False, id="progress")
                progress.display = False  # until a run starts: an idle bar would pulse as if busy
                yield progress
                yield Label("", id="train-status")
                yield Label("", id="train-error")
                yield LossPlot(id="loss-plot")
        yield Footer()

    # --- choosing ---------------------------------------------------------------------------
    def notes_panel_folder(self) -> Path | None:
        folder = Path(self.state.notes_folder).expanduser() if self.state.notes_folder else None
        return folder if folder is not None and folder.is_dir() else None

    def on_screen_resume(self) -> None:
        """Nothing chosen yet, but a folder indexed in the notes panel since: start from that one. A retrain
        asked for in the adapters panel starts now."""
        notes = self.notes_panel_folder()
        if self.folder is None and notes is not None:
            self.choose_folder(notes)
            self.query_one(FolderTree).path = notes
        if self.pending_retrain:
            name, self.pending_retrain = self.pending_retrain, None
            self.start_retrain(name)

    def default_name(self) -> str:
        return self.folder.name.lower().replace(" ", "-") if self.folder else ""

    @on(DirectoryTree.DirectorySelected)
    def folder_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.choose_folder(event.path)

    @on(Input.Submitted, "#folder-path")
    def folder_typed(self, event: Input.Submitted) -> None:
        path = self.checked_folder()
        if path is not None:
            self.choose_folder(path)
            self.query_one(FolderTree).path = path  # show what is in it

    def checked_folder(self) -> Path | None:
        """The typed folder, or None with the reason shown under the path."""
        text = self.query_one("#folder-path", Input).value.strip()
        problem = folder_problem(text)
        self.query_one("#folder-message", Label).update(problem or "")
        return None if problem else Path(text).expanduser().resolve()

    def choose_folder(self, path: Path) -> None:
        self.folder = Path(path)
        self.query_one("#folder-path", Input).value = str(self.folder)
        self.query_one("#folder-message", Label).update("")
        self.query_one("#folder-label", Label).update(f"Notes: {self.folder}")
        name = self.query_one("#name", Input)
        if not name.value:
            name.value = self.default_name()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def params(self) -> dict[str, str] | None:
        """The numbers of the form, or None with the first bad one explained."""
        values = {}
        for key, label, default, kind in PARAMS:
            raw = self.query_one(f"#{key}", Input).value.strip() or default
            try:
                ok = kind(raw) > 0
            except ValueError:
                ok = False
            if not ok:
                self.show_error(f"{label}: {raw!r} is not a number above 0.")
                return None
            values[key] = raw
        return values

    def command(self, folder: Path, params: dict[str, str]) -> list[str]:
        name = self.query_one("#name", Input).value.strip()
        return train_command(self.state.model_source, folder, name, params, self.state.keep_quantized)

    # --- running ----------------------------------------------------------------------------
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.running:
            return
        folder = self.checked_folder()
        if folder is None:  # said under the path, and again here, where eyes are after pressing Start
            self.show_error(folder_problem(self.query_one("#folder-path", Input).value.strip()) or "")
            return
        self.choose_folder(folder)
        if not self.query_one("#name", Input).value.strip():
            self.show_error("Give the adapter a name.")
            return
        params = self.params()
        if params is None:
            return
        self.show_error("")
        self.begin_run(self.command(folder, params))

    def begin_run(self, cmd: list[str]) -> None:
        self.events, self.finished = [], None
        self.query_one(LossPlot).reset()
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self.set_running(True)
        self.run_training(cmd)

    def start_retrain(self, name: str) -> None:
        """Retrain the store's adapter `name` (its model, folder and options are its own, not the form's)."""
        if self.running:
            self.show_error("A training run is going on: cancel it (F4) before retraining.")
            return
        self.query_one("#name", Input).value = name
        self.show_error("")
        self.query_one("#train-status", Label).update(f"Retraining {name} on its notes, from its weights…")
        self.begin_run(retrain_command(name))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        if self.proc is not None and self.running:
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
            assert self.proc.stdout is not None  # piped above
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
            if event.get("warm_start"):
                self.query_one("#folder-label", Label).update(
                    f"Retraining {event['adapter']} from its weights on {d.get('source')}")
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
            self.state.trained_adapter = event["name"]
            self.app.notify(f"Adapter {event['name']!r} is ready. Press F3 to use it.", title="Training done",
                            timeout=15)
        elif kind == "error":
            self.show_error(event["message"])

    def show_error(self, message: str) -> None:
        self.query_one("#train-error", Label).update(message)
