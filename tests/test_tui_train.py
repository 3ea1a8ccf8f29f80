"""The training screen, driven with Pilot: a tiny run to completion, the adapter appears, F3 swaps it in."""

from __future__ import annotations

import pytest

from macllm.storage.chat_store import ChatStore
from tests.test_tui import ready, wait_until
from tests.train_helpers import write_notes
from tui.app import MacllmApp
from tui.screens.chat import ChatScreen
from tui.screens.train import TrainScreen
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
    app = MacllmApp(model=str(tiny_llama_folder), store=store, export_dir=tmp_path,
                    default_settings={"temperature": 0.0, "max_tokens": 8})
    app.train_extra_args = ["--iters", "6", "--batch", "2", "--val-fraction", "0.25"]
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
    app = MacllmApp(model=str(tiny_llama_folder), store=store, export_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        app.action_train()
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen))
        await pilot.pause()
        app.screen.action_start()
        await pilot.pause()
        assert "notes folder" in str(app.screen.query_one("#train-error").render())
        assert not app.screen.running
