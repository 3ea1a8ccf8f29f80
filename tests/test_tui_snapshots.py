"""Pictures of the app's main screens at 120x40, compared with the SVGs in tests/__snapshots__/.

After a deliberate change to the look, regenerate them with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the new SVGs before committing.

Everything that differs between runs or machines is pinned before each picture: the model is given
by a relative path (no temp folder names on screen), the status bar's speed, latency and memory are
set to fixed numbers, and toasts are muted (they come and go on timers).
"""

from __future__ import annotations

import shutil

import pytest

from macllm import hub
from macllm.hub.catalog import DEFAULT_MODEL
from macllm.storage.chat_store import ChatStore
from tests.test_tui import SIZE, ready, send, wait_until
from tui.app import MacllmApp
from tui.widgets.folder_tree import FolderTree

MODEL = "tiny-llama.gguf"
MARKDOWN_ANSWER = """\
## Three things

1. **Bold** and *italic* text
2. `inline code`
3. A [link](https://example.com)

```python
def greet(name):
    return f"Hello, {name}!"
```

| model | size |
|---|---|
| smollm2-135m | 135M |
"""


@pytest.fixture
def app_in(tiny_llama_gguf, tmp_path, monkeypatch):
    """An app factory working in tmp_path: its own home (nothing downloaded), chat store and model copy."""
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    # The catalog grows; the picker's picture should not change with it. Keep the default model's real entry.
    all_models = hub.local_models
    monkeypatch.setattr(hub, "local_models", lambda: [m for m in all_models() if m["name"] == DEFAULT_MODEL])
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_llama_gguf, tmp_path / MODEL)
    store = ChatStore(tmp_path / "chats.sqlite3")
    apps = []

    def make(model: str = MODEL) -> MacllmApp:
        app = MacllmApp(model=model, store=store, default_settings={"temperature": 0.0, "max_tokens": 24})
        app.notify = lambda *args, **kwargs: None
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.bridge.shutdown()
    store.close()


async def loaded(pilot):
    """Ready, and the status bar says so."""
    screen = await ready(pilot)
    await wait_until(pilot, lambda: not screen.status.model.endswith("(loading…)"))
    return screen


def pin_status(pilot) -> None:
    """Replace the measured numbers (they vary run to run) with fixed ones."""
    status = pilot.app.screen.status
    status.decode_tps, status.ttft_ms, status.memory_mb = 123.4, 56.0, 789.0


async def after_one_answer(pilot) -> None:
    await loaded(pilot)
    await send(pilot, "hello world")
    pin_status(pilot)


def test_chat_after_one_answer(app_in, snap_compare):
    assert snap_compare(app_in(), terminal_size=SIZE, run_before=after_one_answer)


def test_saved_chat_with_markdown(app_in, snap_compare):
    """The tiny model only ever answers blank lines, so Markdown rendering is shown on a saved chat."""
    app = app_in()
    chat = app.store.create_conversation("Lists and code", {"temperature": 0.0})
    app.store.add_message(chat.id, "user", "Show me a list and some code.")
    app.store.add_message(chat.id, "assistant", MARKDOWN_ANSWER, "stop")
    app.store.add_message(chat.id, "user", "Thanks. Go on.")
    app.store.add_message(chat.id, "assistant", "Sure, here is the rest", "cancelled")

    async def opened(pilot):
        await loaded(pilot)
        pin_status(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=opened)


def test_help_screen(app_in, snap_compare):
    async def open_help(pilot):
        await loaded(pilot)
        await pilot.press("f1")

    assert snap_compare(app_in(), terminal_size=SIZE, run_before=open_help)


def test_train_screen(app_in, snap_compare, tmp_path, monkeypatch):
    """The folder tree starts in the current folder, without its dot-folders; every number is labelled."""
    work = tmp_path / "work"
    for name in (".git", "notes", "recipes"):
        (work / name).mkdir(parents=True)

    async def open_train(pilot):
        await loaded(pilot)
        monkeypatch.chdir(work)
        await pilot.press("f9")
        # The tree lists the folder in a worker: wait for its two folders, however busy the machine is.
        await wait_until(pilot, lambda: any(len(t.root.children) == 2 for t in pilot.app.screen.query(FolderTree)))
        await pilot.pause(0.1)

    assert snap_compare(app_in(), terminal_size=SIZE, run_before=open_train)


def test_token_inspector(app_in, snap_compare):
    async def open_inspector(pilot):
        await after_one_answer(pilot)
        await pilot.press("ctrl+t")

    assert snap_compare(app_in(), terminal_size=SIZE, run_before=open_inspector)


def test_settings_screen(app_in, snap_compare):
    async def open_settings(pilot):
        await after_one_answer(pilot)
        await pilot.press("ctrl+s")

    assert snap_compare(app_in(), terminal_size=SIZE, run_before=open_settings)


def test_model_picker_after_bad_path(app_in, snap_compare):
    from tui.screens.model_picker import ModelPicker

    async def wait_for_picker(pilot):
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ModelPicker))

    assert snap_compare(app_in("missing.gguf"), terminal_size=SIZE, run_before=wait_for_picker)
