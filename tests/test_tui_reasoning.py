"""The app with a reasoning model: thinking streams into a dimmed block that collapses when the answer
starts, is stored with the answer, comes back collapsed, and the Thinking setting reaches the template."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Collapsible, Static

from macllm.storage.chat_store import ChatStore
from tests.test_reasoning import write_thinking_folder
from tests.test_tui import SIZE, ready, send, wait_until
from tui.app import MacllmApp
from tui.widgets.chat_message import ChatMessage


@pytest.fixture(scope="module")
def thinking_folder(tmp_path_factory) -> Path:
    return write_thinking_folder(tmp_path_factory.mktemp("thinking") / "tiny-thinker")


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


class OneMessage(App):
    def compose(self) -> ComposeResult:
        yield ChatMessage("assistant")


def reasoning_text(widget: ChatMessage) -> str:
    return str(widget.query_one(".reasoning-text", Static).render())


async def test_thinking_shows_while_it_streams_and_collapses_when_the_answer_starts():
    async with OneMessage().run_test(size=SIZE) as pilot:
        widget = pilot.app.query_one(ChatMessage)
        assert widget.thinking is None  # no thinking, no block
        await widget.append_reasoning("Let me ")
        await widget.append_reasoning("think.")
        await pilot.pause()
        block = widget.thinking
        assert isinstance(block, Collapsible) and not block.collapsed and block.title == "Thinking…"
        assert reasoning_text(widget) == "Let me think."
        await widget.append("The answer.")
        await pilot.pause()
        assert block.collapsed and block.title == "Thinking"
        await widget.finish("stop")
        assert block.collapsed and widget.content == "The answer."


async def test_an_answer_from_a_thinking_model_is_split_stored_and_reopened_collapsed(thinking_folder, store):
    app = MacllmApp(model=str(thinking_folder), store=store, default_settings={"temperature": 0.0, "max_tokens": 8})
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hi")
        answer = [w for w in screen.query(ChatMessage) if w.role == "assistant"][-1]
        assert (answer.reasoning, answer.content) == ("hello", " world")
        assert answer.thinking is not None and answer.thinking.collapsed
        stored = store.messages(screen.chat_id)[-1]
        assert (stored.content, stored.meta["reasoning"]) == (" world", "hello")
        assert screen.stored_messages()[-1]["reasoning_content"] == "hello"

        await screen.open_chat(screen.chat_id)  # reopened: the thinking is there, folded away
        await pilot.pause()
        reopened = [w for w in screen.query(ChatMessage) if w.role == "assistant"][-1]
        assert reopened.thinking is not None and reopened.thinking.collapsed and reasoning_text(reopened) == "hello"


async def test_the_thinking_choice_in_settings_reaches_the_template(thinking_folder, store):
    from textual.widgets import Select

    from tui.screens.settings_screen import SettingsScreen

    app = MacllmApp(model=str(thinking_folder), store=store, default_settings={"temperature": 0.0, "max_tokens": 8})
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert screen.settings.generation_params().enable_thinking is None  # the template's own default
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        assert app.screen.query_one("#thinking", Select).value == "default"
        app.screen.query_one("#thinking", Select).value = "off"
        app.screen.action_save()
        await pilot.pause()
        assert screen.settings.thinking is False
        await send(pilot, "hi")
        prompt = app.bridge.engine.tokenizer.decode(app.bridge.engine.chat_tokens(
            app.bridge._conversations[screen.chat_id]))
        assert "<|im_start|>assistant\n<think>\n\n</think>\n\n" in prompt
