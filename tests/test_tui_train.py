"""The training screen, driven with Pilot: a tiny run to completion, the adapter appears, F3 swaps it in;
the form's labels, and choosing the notes folder (typed or picked; where the tree starts, what it hides)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import Input, Label

from macllm.storage.chat_store import ChatStore
from tests.test_tui import ready, wait_until
from tests.train_helpers import write_notes
from tui.app import MacllmApp
from tui.screens.chat import ChatScreen
from tui.screens.train import PARAMS, TrainScreen
from tui.state import AppState
from tui.widgets.folder_tree import FolderTree
from tui.widgets.loss_plot import LossPlot


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


async def test_train_screen_runs_to_done_and_swaps_the_adapter_in(tiny_llama_folder, store, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MACLLM_HOME", str(home))  # the child process inherits it
    notes = write_notes(tmp_path / "my notes")
    form_command = TrainScreen.command  # a 6-step run instead of two epochs
    monkeypatch.setattr(TrainScreen, "command", lambda self, *args: form_command(self, *args) + [
        "--iters", "6", "--batch", "2", "--val-fraction", "0.25"])
    app = MacllmApp(model=str(tiny_llama_folder), store=store, default_settings={"temperature": 0.0, "max_tokens": 8})
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f9")
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen))
        await pilot.pause()
        screen = app.screen
        screen.choose_folder(notes)
        assert screen.query_one("#name").value == "my-notes"
        await pilot.click("#start")
        await wait_until(pilot, lambda: screen.proc is not None and not screen.running, timeout=120)
        await pilot.pause()
        assert screen.finished is not None, (screen.events[-1:], str(screen.query_one("#train-error").render()))
        kinds = [e["event"] for e in screen.events]
        assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 6
        assert len(screen.query_one(LossPlot).train) == 6 and screen.query_one(LossPlot).val
        assert (home / "adapters" / "my-notes" / "adapters.safetensors").exists()
        assert not screen.query_one("#start").disabled
        # Back to the chat (the run's screen stays installed), then F3 swaps the new adapter in.
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        await pilot.press("f3")
        await wait_until(pilot, lambda: app.bridge.engine.adapters["active"] == {"my-notes": 1.0}, timeout=30)
        await pilot.press("f9")
        await wait_until(pilot, lambda: app.screen is screen)
        assert screen.finished["name"] == "my-notes"


async def test_train_screen_explains_what_is_missing(tiny_llama_folder, store, tmp_path):
    app = MacllmApp(model=str(tiny_llama_folder), store=store)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        app.action_train()
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen))
        await pilot.pause()
        app.screen.action_start()
        await pilot.pause()
        assert "notes folder" in str(app.screen.query_one("#train-error").render())
        assert not app.screen.running


class TrainHost(App):
    """The train screen alone (no model): what the form shows and how the folder is chosen."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state

    def on_mount(self) -> None:
        self.push_screen(TrainScreen(self.state))


def tree_names(screen: TrainScreen) -> list[str]:
    return [str(node.label) for node in screen.query_one(FolderTree).root.children]


@pytest.fixture
def folders(tmp_path, monkeypatch) -> Path:
    """The current folder has notes/, a visible folder and a dot-folder."""
    for name in (".cache", "notes", "zeta"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes" / "a.md").write_text("# A\n\nsome notes\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def test_train_form_labels_every_parameter(folders):
    async with TrainHost(AppState()).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = pilot.app.screen
        for key, label, default, _ in PARAMS:
            field = screen.query_one(f"#{key}", Input)
            siblings = list(field.parent.children)
            above = siblings[siblings.index(field) - 1]
            assert isinstance(above, Label) and str(above.render()) == label
            assert field.value == default


async def test_folder_tree_starts_here_without_dot_folders(folders):
    async with TrainHost(AppState()).run_test(size=(120, 40)) as pilot:
        screen = pilot.app.screen
        await wait_until(pilot, lambda: tree_names(screen))
        assert Path(screen.query_one(FolderTree).path) == folders
        assert tree_names(screen) == ["notes", "zeta"]
        assert screen.folder is None and screen.query_one("#folder-path", Input).value == ""


async def test_train_starts_at_the_notes_panel_folder(folders):
    async with TrainHost(AppState(notes_folder=str(folders / "notes"))).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = pilot.app.screen
        assert screen.folder == folders / "notes"
        assert screen.query_one("#folder-path", Input).value == str(folders / "notes")
        assert screen.query_one("#name", Input).value == "notes"


async def test_typed_folder_is_checked_and_chosen(folders):
    async with TrainHost(AppState()).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = pilot.app.screen
        path = screen.query_one("#folder-path", Input)
        path.focus()
        path.value = str(folders / "missing")
        await pilot.press("enter")
        assert str(screen.query_one("#folder-message", Label).render()) == f"{folders / 'missing'}: not a folder"
        assert screen.folder is None
        path.value = str(folders / ".cache")  # hidden in the tree, but it can be typed
        await pilot.press("enter")
        await pilot.pause()
        assert str(screen.query_one("#folder-message", Label).render()) == ""
        assert screen.folder == folders / ".cache" and screen.query_one("#name", Input).value == ".cache"
        assert Path(screen.query_one(FolderTree).path) == folders / ".cache"


async def test_train_refuses_bad_numbers(folders):
    async with TrainHost(AppState(notes_folder=str(folders / "notes"))).run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = pilot.app.screen
        screen.query_one("#rank", Input).value = "0"
        screen.action_start()
        await pilot.pause()
        assert "LoRA rank: '0' is not a number above 0." in str(screen.query_one("#train-error").render())
        assert not screen.running


async def test_adapters_panel_retrains_an_adapter_whose_notes_changed(tiny_llama_folder, store, tmp_path, monkeypatch,
                                                                      capsys):
    from macllm.lora.store import describe, list_adapters
    from tests.train_helpers import train
    from tui.screens.adapters import AdaptersScreen

    home = tmp_path / "home"
    monkeypatch.setenv("MACLLM_HOME", str(home))  # the child process inherits it
    notes = write_notes(tmp_path / "notes", count=6)
    code, _, err = train(capsys, "--model", tiny_llama_folder, "--notes", notes, "--name", "mine", "--iters", 2,
                         "--batch", 2, "--val-fraction", 0)
    assert code == 0, err
    (notes / "note3.md").write_text("# Three\n\nrewritten since.\n")
    app = MacllmApp(model=str(tiny_llama_folder), store=store, default_settings={"temperature": 0.0, "max_tokens": 8})
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f4")
        await wait_until(pilot, lambda: isinstance(app.screen, AdaptersScreen))
        panel = app.screen
        names = [r["name"] for r in panel.rows]
        assert "1 notes changed since training (R: retrain)" in str(panel.query_one("#adapter-table")
                                                                     .get_row("mine"))
        panel.query_one("#adapter-table").move_cursor(row=names.index("mine"))
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen))
        screen = app.screen
        await wait_until(pilot, lambda: screen.proc is not None and not screen.running, timeout=120)
        await pilot.pause()
        assert screen.finished is not None, (screen.events[-1:], str(screen.query_one("#train-error").render()))
        assert screen.events[0]["warm_start"].endswith("/mine")
        assert "Retraining mine" in str(screen.query_one("#folder-label").render())
    row = describe(home / "adapters" / "mine", "user")
    assert row["notes_changed"] == 0 and row["training"]["retrained_from"].endswith("/mine")
    assert [r["name"] for r in list_adapters()].count("mine") == 1
