"""Speculative decoding in the app: the chat settings choose a draft model and prompt lookup, the status bar
gives the share of guesses kept, the token inspector underlines the kept guesses."""

from __future__ import annotations

from textual.widgets import Select

from tests.test_tui import SIZE, make_app, ready, send, store, wait_until  # noqa: F401  (store: a fixture)
from tui.settings import ChatSettings


def test_settings_carry_the_draft_and_prompt_lookup_into_generation():
    params = ChatSettings.from_dict({"draft_model": "qwen2.5-coder-0.5b", "prompt_lookup": True}, "m")
    assert params.generation_params().draft_model == "qwen2.5-coder-0.5b"
    assert params.generation_params().prompt_lookup is True
    damaged = ChatSettings.from_dict({"draft_model": 3, "prompt_lookup": "yes"}, "m").generation_params()
    assert damaged.draft_model is None and damaged.prompt_lookup is None  # a damaged row: the defaults


async def test_a_drafted_answer_shows_its_guesses(tiny_llama_gguf, store, tmp_path):  # noqa: F811
    from tui.screens.inspector import TokenInspector
    from tui.screens.settings_screen import SettingsScreen

    app = make_app(tiny_llama_gguf, store, tmp_path, max_tokens=16)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello")
        assert "guesses" not in str(screen.status.render())
        plain = store.messages(screen.chat_id)[-1].content
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#draft_model", Select).value = str(tiny_llama_gguf)  # the model as its own draft
        app.screen.query_one("#prompt_lookup", Select).value = "off"
        app.screen.action_save()
        await pilot.pause()
        assert store.get_conversation(screen.chat_id).settings["draft_model"] == str(tiny_llama_gguf)
        await pilot.press("ctrl+r")  # regenerate: the same greedy answer, now guessed and checked
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        last = store.messages(screen.chat_id)[-1]
        assert last.content == plain
        assert last.meta["stats"]["draft_accepted"] == last.meta["stats"]["draft_proposed"] > 0
        assert "guesses 100% kept" in str(screen.status.render())
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: isinstance(app.screen, TokenInspector))
        inspector = app.screen
        assert sum(e.drafted for e in inspector.tokens) == last.meta["stats"]["draft_accepted"]
        assert "underlined" in str(inspector.query_one(".dialog-title").render())
        drafted = next(i for i, e in enumerate(inspector.tokens) if e.drafted)
        inspector.action_jump(drafted)
        assert "a kept guess" in str(inspector.query_one("#token-detail").render())
