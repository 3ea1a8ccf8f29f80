"""The app keeps an indexed notes folder indexed: the bridge's watcher runs a pass per batch on the engine
thread and notifies; the notes panel's status line counts files that are not plainly indexed."""

from __future__ import annotations

import threading
import time

from macllm.engine import Engine
from macllm.rag.indexer import index_notes
from macllm.rag.store import Store
from tests.tiny_bert import write_tiny_bert
from tui.bridge import EngineBridge
from tui.screens.notes import index_status


class NotifyingApp:
    def __init__(self):
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, title: str = "", **_) -> None:
        self.notes.append((title, message))


def watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "notes-watch"]


def test_the_bridge_watches_the_folder_until_shutdown(tiny_llama_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    from macllm.rag import watch
    from macllm.rag.embedder import Embedder

    monkeypatch.setattr(watch, "STEP_MS", 200)
    bert = write_tiny_bert(tmp_path / "bert")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# A\n\nthe cat sat\n")
    index = str(tmp_path / "i.sqlite")
    store = Store(index)
    index_notes(store, Embedder(bert), [folder])
    store.close()
    app = NotifyingApp()
    bridge = EngineBridge(app, Engine(str(tiny_llama_folder), progress=False))
    try:
        before = len(watchers())
        bridge.watch_notes(str(folder), index)
        bridge.watch_notes(str(folder), index)  # the same folder again: still one watcher
        assert len(watchers()) == before + 1
        time.sleep(1.5)  # the watch is set up
        (folder / "b.md").write_text("# B\n\nthe dog barked\n")
        deadline = time.time() + 60
        while time.time() < deadline and not app.notes:
            time.sleep(0.1)
        assert app.notes and app.notes[0][0] == "Notes re-indexed" and "1 added" in app.notes[0][1], app.notes
        assert "2 files" in index_status(index)
        (folder / "c.md").write_bytes(b"\0binary")
        while time.time() < deadline and len(app.notes) < 2:
            time.sleep(0.1)
        assert "1 skipped" in index_status(index)
    finally:
        bridge.shutdown()
    deadline = time.time() + 10
    while time.time() < deadline and len(watchers()) > before:
        time.sleep(0.1)
    assert len(watchers()) == before  # shutdown ended the watch


async def test_the_app_watches_the_last_indexed_folder_from_launch(tiny_llama_folder, tmp_path, monkeypatch):
    """Indexed in the notes panel in one session; the next launch catches up on what changed while it was
    closed and then picks up an edit within seconds, without opening the panel."""
    from textual.widgets import Button, Input

    from macllm.rag import watch
    from macllm.storage.chat_store import ChatStore
    from tests.test_tui import ready, wait_until
    from tui.app import MacllmApp
    from tui.screens.notes import NotesScreen

    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(watch, "STEP_MS", 200)
    monkeypatch.setattr("macllm.rag.embedder.DEFAULT_EMBEDDER", str(write_tiny_bert(tmp_path / "tiny-bert")))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# A\n\nthe cat sat\n")
    store = ChatStore(tmp_path / "chats.sqlite3")

    def app() -> MacllmApp:
        return MacllmApp(model=str(tiny_llama_folder), store=store, default_settings={"max_tokens": 4})

    try:
        first = app()
        async with first.run_test(size=(120, 40)) as pilot:
            await ready(pilot)
            await pilot.press("ctrl+g")
            await wait_until(pilot, lambda: isinstance(first.screen, NotesScreen))
            panel = first.screen
            panel.query_one("#folder", Input).value = str(notes)
            panel.query_one("#index", Button).press()
            await wait_until(pilot, lambda: "Done in" in str(panel.query_one("#index-result").render()))
            await first.action_quit()
        index = str(tmp_path / "home" / "indexes" / "notes.sqlite")
        assert "1 files" in index_status(index)
        (notes / "while-closed.md").write_text("# Closed\n\nwritten while the app was closed\n")

        second = app()
        async with second.run_test(size=(120, 40)) as pilot:
            await ready(pilot)
            assert second.state.notes_folder == str(notes.resolve())
            await wait_until(pilot, lambda: any("since last time" in n.title for n in second._notifications),
                             timeout=60)
            assert "2 files" in index_status(index)
            await pilot.pause(1.5)  # the watch is set up
            (notes / "b.md").write_text("# B\n\nthe dog barked\n")
            await wait_until(pilot, lambda: any(n.title == "Notes re-indexed" and "1 added" in n.message
                                                for n in second._notifications), timeout=30)
            assert "3 files" in index_status(index)
            await second.action_quit()
    finally:
        store.close()
