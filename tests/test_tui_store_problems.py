"""The app with a chat file it cannot use: it starts, says what is wrong and where, keeps what was typed,
and offers a fresh file beside the old one, which it never changes.

Tests run as root here, and root ignores file modes: `read_only` (tests/chat_store_helpers.py) makes a file
immutable with `chattr +i` instead, and a store whose writes start failing mid-session is stood in for by
SQLite's `PRAGMA query_only` on its connection (writes then fail with SQLITE_READONLY, as on a read-only file).
"""

from __future__ import annotations

import pytest

from macllm.storage.chat_store import ChatStore
from tests.chat_store_helpers import damage_pages, filled_store, read_only
from tests.test_tui import SIZE, make_app, messages, ready, send, wait_until
from tui.app import MacllmApp
from tui.screens.chat import ChatScreen
from tui.screens.prompt_screen import ConfirmScreen
from tui.widgets.chat_input import ChatInput
from tui.widgets.chat_message import ChatMessage


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("MACLLM_HOME", str(path))
    return path


def default_app(tiny_llama_gguf) -> MacllmApp:
    """The app as `macllm chat` makes it: it opens $MACLLM_HOME/chats.sqlite3 itself."""
    return MacllmApp(model=str(tiny_llama_gguf), default_settings={"temperature": 0.0, "max_tokens": 12})


def banner_text(screen: ChatScreen) -> str:
    banner = screen.query_one("#store-problem")
    return str(banner.render()) if banner.display else ""


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]


async def offered(pilot) -> ConfirmScreen:
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
    return pilot.app.screen


async def press_enter_in_input(pilot, text: str | None = None) -> ChatInput:
    chat_input = pilot.app.screen.query_one(ChatInput)
    if text is not None:
        chat_input.text = text
    chat_input.focus()
    await pilot.press("enter")
    await pilot.pause()
    return chat_input


async def answered(pilot) -> None:
    screen = pilot.app.screen
    await wait_until(pilot, lambda: not pilot.app.bridge.busy and screen.answer_widget is None
                     and bool(screen.query(ChatMessage)) and screen.query(ChatMessage).last().role == "assistant")


async def test_read_only_chat_file_shows_its_chats_keeps_the_typed_message_and_offers_a_fresh_file(
        tiny_llama_gguf, home):
    path = home / "chats.sqlite3"
    with ChatStore(path) as s:
        s.add_message(s.create_conversation("old chat").id, "user", "kept")
    before = path.read_bytes()
    with read_only(path):
        app = default_app(tiny_llama_gguf)
        async with app.run_test(size=SIZE) as pilot:
            offer = await offered(pilot)  # said at start, before anything is typed
            assert str(path) in offer.question and str(home / "chats-") in offer.question
            await pilot.click("#no")
            screen = await ready(pilot)
            assert "read-only" in banner_text(screen) and str(path) in banner_text(screen)
            assert messages(screen) == [("user", "kept")]  # its chats are still there to read

            chat_input = await press_enter_in_input(pilot, "my important question")
            await offered(pilot)  # sending offers the fresh file again
            assert chat_input.text == "my important question"  # never cleared: it was not saved
            assert messages(screen) == [("user", "kept")]
            await pilot.click("#yes")
            await wait_until(pilot, lambda: app.store.path != path)
            fresh = app.store.path
            assert fresh.parent == home and fresh.name.startswith("chats-") and fresh.suffix == ".sqlite3"
            assert banner_text(screen) == "" and chat_input.text == "my important question"
            assert any(str(fresh) in n and str(path) in n for n in notes(app))  # where both files are

            await press_enter_in_input(pilot)
            await answered(pilot)
            saved = app.store.messages(screen.chat_id)  # the chat on screen was carried over, then went on
            assert [(m.role, m.content) for m in saved][:2] == [("user", "kept"), ("user", "my important question")]
            assert saved[-1].role == "assistant"
        app.store.close()
    assert path.read_bytes() == before


async def test_damaged_chat_file_app_starts_says_where_and_continues_in_a_fresh_file(tiny_llama_gguf, home):
    path = home / "chats.sqlite3"
    filled_store(path)
    damage_pages(path)
    before = path.read_bytes()
    app = default_app(tiny_llama_gguf)
    async with app.run_test(size=SIZE) as pilot:
        offer = await offered(pilot)
        assert "damaged" in offer.question and str(path) in offer.question
        await pilot.click("#no")
        screen = await ready(pilot)
        assert "damaged" in banner_text(screen) and ".recover" in banner_text(screen)
        assert messages(screen) == []

        chat_input = await press_enter_in_input(pilot, "still here?")
        await offered(pilot)
        assert chat_input.text == "still here?"
        await pilot.click("#yes")
        await wait_until(pilot, lambda: app.store is not None and app.store.path != path)
        await press_enter_in_input(pilot)
        await answered(pilot)
        assert [m.content for m in app.store.messages(screen.chat_id)][0] == "still here?"
        app.store.close()
    assert path.read_bytes() == before
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("chats.sqlite3")) == ["chats.sqlite3"]


async def test_a_failed_save_mid_session_keeps_the_typed_message_and_carries_the_chat_over(
        tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "first")
        shown = messages(screen)
        store._conn.execute("PRAGMA query_only = 1")  # from now on every write fails, as on a read-only file

        chat_input = await press_enter_in_input(pilot, "second")
        offer = await offered(pilot)
        assert "read-only" in offer.question
        assert chat_input.text == "second" and messages(screen) == shown
        await pilot.click("#no")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
        assert "read-only" in banner_text(screen)

        await press_enter_in_input(pilot)  # Enter again: offered again
        await offered(pilot)
        await pilot.click("#yes")
        await wait_until(pilot, lambda: app.store is not store)
        assert app.store.path.parent == store.path.parent
        carried = [(m.role, m.content) for m in app.store.messages(screen.chat_id)]
        assert carried == shown
        await press_enter_in_input(pilot)
        await answered(pilot)
        assert [m.content for m in app.store.messages(screen.chat_id)][2] == "second"
        app.store.close()
    with ChatStore(store.path) as old:  # the app closed its connection to the old file
        assert len(old.list_conversations()) == 1 and len(old.messages(old.list_conversations()[0].id)) == 2


async def test_an_answer_that_cannot_be_saved_stays_on_screen_and_is_carried_over(
        tiny_llama_gguf, store, tmp_path, monkeypatch):
    save = store.add_message

    def save_then_turn_read_only(*args, **kwargs):
        saved = save(*args, **kwargs)
        store._conn.execute("PRAGMA query_only = 1")  # the question is saved; the answer's save will fail
        return saved

    monkeypatch.setattr(store, "add_message", save_then_turn_read_only)
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await press_enter_in_input(pilot, "hello")
        await offered(pilot)
        answer = screen.query(ChatMessage).last()
        assert answer.role == "assistant" and answer.content
        await pilot.click("#yes")
        await wait_until(pilot, lambda: app.store is not store)
        saved = app.store.messages(screen.chat_id)
        assert [(m.role, m.content) for m in saved] == [("user", "hello"), ("assistant", answer.content)]
        assert saved[1].meta["stats"]["generation_tokens"] > 0
        app.store.close()


async def test_export_into_a_read_only_folder_is_a_notification(tiny_llama_gguf, store, tmp_path, monkeypatch):
    folder = tmp_path / "exports"
    folder.mkdir()
    monkeypatch.chdir(folder)
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        with read_only(folder):
            await pilot.press("ctrl+o")
            await pilot.pause()
        assert any("could not export" in n.lower() and str(folder) in n for n in notes(app))
        assert list(folder.iterdir()) == []
        await pilot.press("ctrl+o")  # the app is still there, and the folder writable again
        await pilot.pause()
        exported = list(folder.glob("*.md"))
        assert len(exported) == 1 and exported[0].stat().st_mode & 0o777 == 0o600  # private, like the chats
        assert [p.name for p in folder.iterdir()] == [exported[0].name]  # no temporary file left


async def test_a_fresh_file_that_cannot_be_made_says_so(tiny_llama_gguf, home, monkeypatch):
    path = home / "chats.sqlite3"
    path.write_text("not a database\n" * 10)
    app = default_app(tiny_llama_gguf)
    async with app.run_test(size=SIZE) as pilot:
        await offered(pilot)
        await wait_until(pilot, lambda: app.bridge.ready)  # the model is in place before home turns read-only
        with read_only(home):  # no file can be made beside it either
            await pilot.click("#yes")
            await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen))
            await pilot.pause()
        assert app.store is None and any("MACLLM_HOME" in n for n in notes(app))
        assert "not a usable macllm chat database" in banner_text(app.screen)
    assert sorted(p.name for p in home.glob("chats*")) == ["chats.sqlite3"]
