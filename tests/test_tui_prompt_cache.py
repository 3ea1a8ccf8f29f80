"""The prompt cache's cap in the app's settings (Ctrl+S): shown, checked, saved as the setting every later macllm
reads, and applied to the running engine."""

from __future__ import annotations

import json

import pytest

from macllm.storage.chat_store import ChatStore
from tests.test_tui import SIZE, ready
from tui.app import MacllmApp
from tui.screens.settings_screen import SettingsScreen


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MACLLM_PROMPT_CACHE_MB")  # conftest turns the cache off for other tests
    return tmp_path / "home"


async def test_the_cap_is_set_in_the_settings_and_reaches_the_engine(tiny_llama_gguf, tmp_path, home):
    store = ChatStore(tmp_path / "chats.sqlite3")
    app = MacllmApp(model=str(tiny_llama_gguf), store=store, default_settings={"max_tokens": 4})
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await pilot.press("ctrl+s")
            await pilot.pause()
            settings = app.screen
            assert isinstance(settings, SettingsScreen)
            field = settings.query_one("#prompt_cache_mb")
            assert field.value == "2048"  # the default

            field.value = "lots"
            settings.action_save()
            await pilot.pause()
            assert app.screen is settings  # refused, with a notification; nothing saved
            assert not (home / "prompt_cache.json").exists()

            field.value = "64"
            settings.action_save()
            await pilot.pause()
            assert not isinstance(app.screen, SettingsScreen)
            assert json.loads((home / "prompt_cache.json").read_text()) == {"limit_mb": 64}
            engine = app.bridge.engine
            assert engine.submit(lambda: engine.prompt_cache.limit_bytes).result() == 64 * 2**20
    finally:
        store.close()


async def test_deleting_a_chat_deletes_its_prompt_cache(tiny_llama_gguf, tmp_path, home):
    from tests.test_prompt_cache_engine import SYSTEM
    from tests.test_tui import send

    store = ChatStore(tmp_path / "chats.sqlite3")
    app = MacllmApp(model=str(tiny_llama_gguf), store=store,
                    default_settings={"max_tokens": 4, "temperature": 0.0, "system": SYSTEM})
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = await ready(pilot)
            app.bridge.engine.prompt_cache.min_tokens = 16  # the tiny model's context is 512
            await send(pilot, "Where is the pier?")
            cache = home / "cache"
            assert len(list(cache.glob("*.safetensors"))) == 1
            await screen.delete_chat()  # what F8 does once confirmed
            app.bridge.engine.submit(lambda: None).result()
            assert list(cache.glob("*.safetensors")) == []
    finally:
        store.close()
