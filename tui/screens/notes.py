"""The notes panel: which index, its status, (re)index a folder with a progress bar, and the switch
that makes answers come from the notes with numbered citations."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ProgressBar, Switch

from macllm.errors import MacllmError
from macllm.rag.status import file_statuses, status_counts
from macllm.rag.store import Store, index_path
from tui.bridge import EngineBridge
from tui.events import IndexFailed, IndexFinished, IndexProgress
from tui.keymap import bindings
from tui.last_notes import save_last_notes
from tui.state import AppState


def index_status(index: str | None) -> str:
    path = index_path(index)
    if not path.exists():
        return f"{path} — not created yet: index a folder below."
    try:
        store = Store(path, create=False)
        try:
            files, chunks = store.counts()
            counts = status_counts(file_statuses(store))
        finally:
            store.close()
    except (MacllmError, sqlite3.DatabaseError) as e:
        return str(e).splitlines()[0]
    when = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    # Per-file status beyond "indexed": changed or deleted since, skipped or failed (with why in the CLI).
    others = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()) if state != "indexed")
    return (f"{path} — {files} files, {chunks} chunks, last indexed {when}"
            + (f"\n{others} (`macllm index --status` lists them with the reasons)" if others else ""))


class NotesScreen(ModalScreen[None]):
    """Changes `state` (notes mode, index, folder) as the user goes."""

    SCOPE = "notes"
    BINDINGS = bindings(SCOPE)

    def __init__(self, state: AppState, bridge: EngineBridge) -> None:
        super().__init__(classes="dialog-screen")
        self.state = state
        self.bridge = bridge

    def compose(self) -> ComposeResult:
        state = self.state
        with Vertical(classes="dialog notes"):
            yield Label("Notes", classes="dialog-title")
            with Horizontal(classes="row"):
                yield Switch(state.notes_mode, id="notes-mode")
                yield Label("Answer from my notes, with citations")
            yield Label("Index (a name under $MACLLM_HOME/indexes, or a path)")
            yield Input(state.notes_index or "notes", id="index-name")
            yield Label("", id="index-status")
            yield Label("Folder to (re)index")
            yield Input(state.notes_folder or str(Path.cwd()), id="folder")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Index", variant="primary", id="index")
                yield Button("Close", id="close")
            yield ProgressBar(id="index-progress", show_eta=True)
            yield Label("", id="index-result")

    def on_mount(self) -> None:
        self.show_status()

    def index_name(self) -> str | None:
        return self.query_one("#index-name", Input).value.strip() or None

    def show_status(self) -> None:
        self.query_one("#index-status", Label).update(index_status(self.index_name()))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "index-name":
            self.state.notes_index = self.index_name()
            self.show_status()

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self.state.notes_mode = event.value

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "close":
            self.action_close()
            return
        folder = self.query_one("#folder", Input).value.strip()
        if not folder or not Path(folder).expanduser().is_dir():
            self.notify(f"{folder or 'nothing'}: not a folder", severity="error")
            return
        self.state.notes_folder = folder
        event.button.disabled = True
        self.query_one("#index-result", Label).update("Indexing…")
        self.bridge.index_folder(folder, self.index_name(), target=self)

    def on_index_progress(self, message: IndexProgress) -> None:
        self.query_one(ProgressBar).update(total=message.total, progress=message.done)

    def on_index_finished(self, message: IndexFinished) -> None:
        s = message.summary
        skipped = sum(s.skipped.values())
        self.query_one("#index-result", Label).update(
            f"Done in {s.seconds:.1f} s: {s.added} added, {s.changed} changed, {s.removed} removed, "
            f"{s.unchanged} unchanged, {skipped} skipped; {s.total_chunks} chunks.")
        self.query_one("#index", Button).disabled = False
        self.show_status()
        if self.state.notes_folder:  # from now on (and from the next launch) the app keeps it indexed
            self.bridge.watch_notes(self.state.notes_folder, self.index_name())
            try:
                save_last_notes(self.state.notes_folder, self.index_name())
            except MacllmError as e:
                self.notify(str(e), severity="warning", timeout=8)

    def on_index_failed(self, message: IndexFailed) -> None:
        self.query_one("#index-result", Label).update("")
        self.query_one("#index", Button).disabled = False
        self.notify(message.error, title="Indexing failed", severity="error", timeout=8)

    def action_close(self) -> None:
        self.dismiss(None)
