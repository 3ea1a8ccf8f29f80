"""The terminal app, driven with Textual's Pilot on a tiny model."""

from __future__ import annotations

import asyncio

import pytest

from macllm import hub
from macllm.errors import MacllmError
from macllm.storage.chat_store import ChatStore
from tui.app import MacllmApp
from tui.screens.chat import ChatScreen
from tui.widgets.chat_input import ChatInput
from tui.widgets.chat_message import ChatMessage

SIZE = (120, 40)


@pytest.fixture
def store(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def make_app(tiny_llama_gguf, store, tmp_path, **settings):
    defaults = {"temperature": 0.0, "max_tokens": 12}
    defaults.update(settings)
    return MacllmApp(model=str(tiny_llama_gguf), store=store, default_settings=defaults)


async def wait_until(pilot, condition, timeout=20.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


async def ready(pilot):
    await wait_until(pilot, lambda: pilot.app.bridge.ready and isinstance(pilot.app.screen, ChatScreen))
    return pilot.app.screen


async def send(pilot, text):
    screen = pilot.app.screen
    chat_input = screen.query_one(ChatInput)
    chat_input.text = text
    chat_input.focus()
    await pilot.press("enter")
    await wait_until(pilot, lambda: not pilot.app.bridge.busy and screen.answer_widget is None)


@pytest.fixture
def slow_tokens(monkeypatch):
    """The tiny model is too quick to interrupt: after a few tokens the answer stalls (still streaming,
    the app busy) until the test opens the gate, however loaded the machine is. Returns the gate."""
    import threading

    from macllm.tokenizer import StreamDecoder

    original = StreamDecoder.add
    gate = threading.Event()
    seen = [0]

    def stalling_add(self, token_id):
        seen[0] += 1
        if seen[0] > 4:
            gate.wait(30)  # a safety net: a test that forgets the gate still ends
        return original(self, token_id)

    monkeypatch.setattr(StreamDecoder, "add", stalling_add)
    return gate


def messages(screen):
    return [(w.role, w.content) for w in screen.query(ChatMessage)]


async def test_send_and_stream_answer(tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello world")
        shown = messages(screen)
        assert shown[0] == ("user", "hello world") and shown[1][0] == "assistant"
        stored = store.messages(screen.chat_id)
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[1].content == shown[1][1]
        assert stored[1].meta["stats"]["generation_tokens"] > 0
        assert screen.status.decode_tps >= 0 and screen.status.context_length == 512


async def test_enter_sends_shift_enter_adds_newline(tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_input = screen.query_one(ChatInput)
        chat_input.focus()
        await pilot.press("h", "i", "ctrl+j", "y", "o")
        assert chat_input.text == "hi\nyo"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        assert messages(screen)[0] == ("user", "hi\nyo")
        assert chat_input.text == ""


async def test_stop_keeps_partial_answer_marked_stopped(tiny_llama_gguf, store, tmp_path, slow_tokens):
    app = make_app(tiny_llama_gguf, store, tmp_path, max_tokens=400)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        screen.query_one(ChatInput).text = "hello"
        screen.query_one(ChatInput).focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.answer_widget is not None and len(screen.answer_widget.tokens) >= 2)
        await pilot.press("escape")
        slow_tokens.set()
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        last = store.messages(screen.chat_id)[-1]
        assert last.role == "assistant" and last.finish_reason == "cancelled"
        assert 2 <= last.meta["stats"]["generation_tokens"] < 400
        widget = [w for w in screen.query(ChatMessage)][-1]
        assert widget.has_class("stopped")


async def test_keys_are_handled_while_streaming(tiny_llama_gguf, store, tmp_path, slow_tokens):
    app = make_app(tiny_llama_gguf, store, tmp_path, max_tokens=300)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        chat_input = screen.query_one(ChatInput)
        chat_input.text = "hello"
        chat_input.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.answer_widget is not None and screen.answer_widget.tokens)
        await pilot.press("a", "b", "c")  # typing the next message while the answer streams
        assert chat_input.text == "abc"
        await pilot.press("enter")  # refused politely while busy
        await pilot.press("escape")
        slow_tokens.set()
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        assert chat_input.text == "abc"


async def test_regenerate_replaces_last_answer(tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello")
        first = store.messages(screen.chat_id)[-1]
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: screen.answer_widget is not None or not app.bridge.busy)
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        stored = store.messages(screen.chat_id)
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[-1].created_at > first.created_at and stored[-1].content == first.content  # greedy
        assert len(screen.query(ChatMessage)) == 2


async def test_edit_and_resend_last_message(tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+l")
        chat_input = screen.query_one(ChatInput)
        assert chat_input.text == "hello"
        assert store.messages(screen.chat_id) == [] and len(screen.query(ChatMessage)) == 0
        chat_input.text = "world"
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        assert [m.content for m in store.messages(screen.chat_id)][0] == "world"


async def test_new_chat_and_switching(tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "first chat")
        first_id = screen.chat_id
        await pilot.press("ctrl+n")
        assert screen.chat_id is None and len(screen.query(ChatMessage)) == 0
        await send(pilot, "second chat")
        assert len(store.list_conversations()) == 2
        await screen.open_chat(first_id)
        assert messages(screen)[0] == ("user", "first chat")


async def test_chats_persist_across_restart(tiny_llama_gguf, tmp_path):
    path = tmp_path / "chats.sqlite3"
    store = ChatStore(path)
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "remember me")
        answer = messages(app.screen)[1][1]
    store.close()
    store2 = ChatStore(path)
    app2 = make_app(tiny_llama_gguf, store2, tmp_path)
    async with app2.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        assert messages(screen) == [("user", "remember me"), ("assistant", answer)]
        assert store2.list_conversations()[0].title == "remember me"
    store2.close()


async def test_token_inspector(tiny_llama_gguf, store, tmp_path):
    from tui.screens.inspector import TokenInspector

    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+t")
        await pilot.pause()
        inspector = app.screen
        assert isinstance(inspector, TokenInspector)
        n = len(inspector.tokens)
        assert n == store.messages(screen.chat_id)[-1].meta["stats"]["generation_tokens"]
        table = inspector.query_one("#alternatives")
        assert table.row_count == 5
        await pilot.press("right")
        assert inspector.strip.selected == min(1, n - 1)
        await pilot.press("escape")
        assert app.screen is screen


async def test_settings_apply_to_next_answer(tiny_llama_gguf, store, tmp_path):
    from tui.screens.settings_screen import SettingsScreen

    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+s")
        await pilot.pause()
        settings = app.screen
        assert isinstance(settings, SettingsScreen)
        settings.query_one("#max_tokens").value = "3"
        settings.query_one("#system").text = "Be brief."
        settings.action_save()
        await pilot.pause()
        assert screen.settings.max_tokens == 3 and screen.settings.system == "Be brief."
        assert store.get_conversation(screen.chat_id).settings["max_tokens"] == 3
        await send(pilot, "again")
        last = store.messages(screen.chat_id)[-1]
        assert last.meta["stats"]["generation_tokens"] <= 3


async def test_help_and_export(tiny_llama_gguf, store, tmp_path, monkeypatch):
    from tui.screens.help import HelpScreen

    monkeypatch.chdir(tmp_path)  # exports go to the current folder
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await send(pilot, "hello")
        await pilot.press("ctrl+o")
        await pilot.pause()
        exported = list(tmp_path.glob("*.md"))
        assert len(exported) == 1 and "hello" in exported[0].read_text()


async def test_bad_model_opens_picker(store, tmp_path):
    from tui.screens.model_picker import ModelPicker

    app = MacllmApp(model=str(tmp_path / "missing.gguf"), store=store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPicker))
        assert "not found" in app.screen.reason


async def test_autoscroll_follows_only_at_the_bottom(tiny_llama_gguf, store, tmp_path, slow_tokens):
    chat = store.create_conversation("long", {"temperature": 0.0, "max_tokens": 120})
    for i in range(5):  # history taller than the screen (and within the tiny model's 512-token context)
        store.add_message(chat.id, "user", f"q{i}")
        store.add_message(chat.id, "assistant", "\n\n".join(f"p{j}" for j in range(4)))
    app = make_app(tiny_llama_gguf, store, tmp_path, max_tokens=120)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        conversation = screen.conversation
        chat_input = screen.query_one(ChatInput)
        chat_input.text = "again"
        chat_input.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.answer_widget is not None and len(screen.answer_widget.tokens) > 3)
        await pilot.pause(0.1)
        assert conversation.max_scroll_y > 0
        assert conversation.scroll_y == conversation.max_scroll_y  # following the stream
        # What a mouse wheel or scrollbar drag does: release the anchor and move up.
        conversation.release_anchor()
        conversation.scroll_to(y=0, animate=False, immediate=True)
        slow_tokens.set()  # the rest of the answer arrives while the reader is up there
        await wait_until(pilot, lambda: not app.bridge.busy and screen.answer_widget is None)
        await pilot.pause(0.1)
        assert conversation.scroll_y == 0 and conversation.max_scroll_y > 0  # the reader stayed put


async def test_generation_error_becomes_a_notification(tiny_llama_gguf, store, tmp_path):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "xq7 " * 200)  # longer than the tiny model's 512-token context
        assert any("context" in n.message for n in app._notifications)
        widget = list(screen.query(ChatMessage))[-1]
        assert widget.finish_reason == "error"
        await pilot.press("ctrl+l")  # take the too-long message back, then carry on
        await send(pilot, "hi")
        assert store.messages(screen.chat_id)[-1].role == "assistant"


@pytest.fixture
def tiny_adapters(tiny_llama_gguf, tmp_path, monkeypatch):
    """Two random adapters for the tiny model in a private store, plus one made for another base."""
    import dataclasses

    from macllm.loader import read_model_files
    from macllm.lora import formats
    from macllm.lora.random_adapter import random_adapter

    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    from macllm.paths import adapters_dir

    cfg = read_model_files(tiny_llama_gguf)[0]
    for name, seed in (("alpha", 1), ("beta", 2)):
        formats.write_adapter(random_adapter(cfg, name, seed=seed, b_std=0.5, base_model="tiny"),
                              adapters_dir() / name, cfg.num_hidden_layers)
    other = dataclasses.replace(cfg, hidden_size=cfg.hidden_size * 2)
    formats.write_adapter(random_adapter(other, "wide", base_model="a wider model"), adapters_dir() / "wide",
                          other.num_hidden_layers)
    return ["alpha", "beta"]


async def answer_tokens(pilot, screen, text):
    await send(pilot, text)
    return list(screen.query(ChatMessage))[-1]


async def test_swap_adapter_mid_conversation(tiny_llama_gguf, store, tmp_path, tiny_adapters):
    from tui.screens.adapters import AdaptersScreen

    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        base = await answer_tokens(pilot, screen, "hello")
        await pilot.press("f4")
        await pilot.pause()
        panel = app.screen
        assert isinstance(panel, AdaptersScreen)
        names = [r["name"] for r in panel.rows]
        assert {"alpha", "beta", "wide"} <= set(names)
        assert panel.problems["wide"] and "made for" in panel.problems["wide"]
        panel.query_one("#adapter-table").move_cursor(row=names.index("alpha"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.bridge.active_adapters == {"alpha": 1.0})
        assert any("swapped in" in n.message for n in app._notifications)
        adapted = await answer_tokens(pilot, screen, "hello")
        assert adapted.meta["adapters"] == {"alpha": 1.0}
        stored = store.messages(screen.chat_id)[-1]
        assert stored.meta["adapters"] == {"alpha": 1.0}
        assert "alpha" in screen.status.adapters
        # Base output differs from the adapted one (B is far from zero in these adapters).
        assert [t.token_id for t in adapted.tokens] != [t.token_id for t in base.tokens]
        # And back to none: the same as the base answer to the same conversation from scratch.
        await pilot.press("f4")
        await pilot.pause()
        await pilot.press("n")
        await wait_until(pilot, lambda: app.bridge.active_adapters == {})
        assert "adapters" not in (await answer_tokens(pilot, screen, "hello")).meta


async def test_blend_adapters(tiny_llama_gguf, store, tmp_path, tiny_adapters):
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await pilot.press("f4")
        await pilot.pause()
        panel = app.screen
        table = panel.query_one("#adapter-table")
        names = [r["name"] for r in panel.rows]
        table.move_cursor(row=names.index("alpha"))
        await pilot.press("b")
        table.move_cursor(row=names.index("beta"))
        await pilot.press("b", "minus", "minus")
        table.move_cursor(row=names.index("wide"))
        await pilot.press("b")  # refused: made for another base
        assert panel.blend == {"alpha": 1.0, "beta": 0.5}
        await pilot.press("a")
        await wait_until(pilot, lambda: app.bridge.active_adapters == {"alpha": 1.0, "beta": 0.5})
        answer = await answer_tokens(pilot, screen, "hello")
        assert answer.meta["adapters"] == {"alpha": 1.0, "beta": 0.5}
        assert app.bridge.engine.adapters["active"] == {"alpha": 1.0, "beta": 0.5}


async def test_index_a_folder_and_answer_from_notes_with_citations(tiny_llama_gguf, store, tmp_path, monkeypatch):
    from textual.widgets import Button, Input, Switch

    from tests.tiny_bert import write_tiny_bert
    from tui.screens.notes import NotesScreen
    from tui.screens.sources import ChunkScreen, SourcesScreen

    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "cats.md").write_text("# Cats\n\nCats purr and sleep all day.\n")
    (notes / "dogs.md").write_text("# Dogs\n\nDogs bark at the mailman.\n")
    # A new index uses the default embedder: the tiny one here, instead of downloading MiniLM.
    monkeypatch.setattr("macllm.rag.embedder.DEFAULT_EMBEDDER", str(write_tiny_bert(tmp_path / "tiny-bert")))
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await pilot.press("ctrl+g")
        await pilot.pause()
        panel = app.screen
        assert isinstance(panel, NotesScreen)
        panel.query_one("#folder", Input).value = str(notes)
        panel.query_one("#index", Button).press()
        await wait_until(pilot, lambda: "Done in" in str(panel.query_one("#index-result").render()))
        assert "2 added" in str(panel.query_one("#index-result").render())
        assert "2 files" in str(panel.query_one("#index-status").render())
        panel.query_one(Switch).value = True
        await pilot.pause()
        await pilot.press("escape")
        assert app.state.notes_mode and app.state.notes_folder == str(notes) and "notes" in screen.status.notes
        await send(pilot, "Which animal purrs?")
        answer = list(screen.query(ChatMessage))[-1]
        sources = answer.meta["sources"]
        assert {s["path"].rsplit("/", 1)[-1] for s in sources} <= {"cats.md", "dogs.md"} and sources
        assert sources[0]["line_start"] >= 1 and "Sources" in str(answer.query_one(".sources").render())
        assert store.messages(screen.chat_id)[-1].meta["sources"] == sources
        await pilot.press("ctrl+f")
        await pilot.pause()
        assert isinstance(app.screen, SourcesScreen)
        await pilot.press("enter")
        await pilot.pause()
        chunk = app.screen
        assert isinstance(chunk, ChunkScreen)
        assert f":{sources[0]['line_start']}-{sources[0]['line_end']}" in str(chunk.query_one("#chunk-title").render())


async def test_kv_bits_reach_the_chat_caches(tiny_llama_gguf, store, tmp_path):
    from macllm.cache.quantized import QuantizedKVCache

    app = MacllmApp(model=str(tiny_llama_gguf), store=store, default_settings={"temperature": 0.0, "max_tokens": 5},
                    kv_bits=8)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        engine = app.bridge.engine
        assert engine.kv_bits == 8
        # Conversations are the engine thread's: look at their caches from there.
        caches = engine.submit(lambda: [c.cache for c in engine._conversations.values()]).result()
        assert caches and isinstance(caches[0][0], QuantizedKVCache)


async def test_command_palette_runs_keymap_actions(tiny_llama_gguf, store, tmp_path):
    from tui.screens.train import TrainScreen

    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        for title in ("Show or hide chats", "Train an adapter on notes"):  # a chat screen action, an app action
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*title)
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause()
        assert not screen.query_one("#chats").display
        await wait_until(pilot, lambda: isinstance(app.screen, TrainScreen))


async def test_model_picker_opens_when_models_cannot_be_listed(tiny_llama_gguf, store, tmp_path, monkeypatch):
    # A read-only $MACLLM_HOME: listing models fails to make the models folder. The picker still opens
    # (a path can be typed) and a notification says why the list is empty; the app does not crash.
    app = make_app(tiny_llama_gguf, store, tmp_path)

    def unlistable():
        raise MacllmError("cannot create the folder /home/x/models (read-only)")

    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        monkeypatch.setattr(hub, "local_models", unlistable)
        app.action_pick_model("the model failed to load")
        await pilot.pause()
        assert type(app.screen).__name__ == "ModelPicker"
        assert any("Models cannot be listed" in str(n.message) for n in app._notifications)


async def test_the_picker_rows_say_which_implementation_and_list_the_hugging_face_cache(
        tiny_llama_gguf, store, tmp_path, monkeypatch):
    from textual.widgets import OptionList

    rows = [{"name": "tiny", "architecture": "llama", "implementation": "own", "params": "1M", "pulled": True,
             "source": "local"},
            {"name": "mlx-community/Phi-mini-4bit", "architecture": "olmo2", "implementation": "mlx-lm",
             "quantization": "4-bit", "pulled": True, "source": "hf"}]
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        monkeypatch.setattr(hub, "local_models", lambda: rows)
        chosen: list[str] = []
        monkeypatch.setattr(app, "ensure_model", chosen.append)
        app.action_pick_model()
        await pilot.pause()
        options = app.screen.query_one("#models", OptionList)
        prompts = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert "llama · own · 1M · downloaded" in prompts[0]
        assert "olmo2 · mlx-lm · 4-bit · Hugging Face cache" in prompts[1]
        options.highlighted = 1
        options.action_select()
        await pilot.pause()
        assert chosen == ["mlx-community/Phi-mini-4bit"]  # the repo id: resolved from the cache, offline


async def test_the_load_notification_says_which_implementation_runs_the_model(tmp_path, store):
    from tests.test_mlx_lm_family import save_mlx_lm_folder

    folder = save_mlx_lm_folder("olmo2", tmp_path / "olmo2")
    app = MacllmApp(model=str(folder), store=store, default_settings={"temperature": 0.0, "max_tokens": 4})
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await wait_until(pilot, lambda: any("ready" in str(n.message) for n in app._notifications))
        ready_note = next(str(n.message) for n in app._notifications if "ready" in str(n.message))
        assert "runs on mlx-lm's model class" in ready_note
        assert "(mlx-lm)" in pilot.app.screen.status.render()  # and the status bar keeps saying it
        await send(pilot, "hello")
        assert store.messages(pilot.app.screen.chat_id)[-1].role == "assistant"


async def test_the_thinking_choice_is_three_way_and_kept_with_the_chat(tiny_llama_gguf, store, tmp_path):
    from textual.widgets import Select

    from tui.screens.settings_screen import SettingsScreen
    from tui.settings import ChatSettings

    # Stored values of another kind (a damaged row) fall back to the template's default.
    assert ChatSettings.from_dict({"thinking": "yes"}, "m").thinking is None
    assert ChatSettings.from_dict({"thinking": False}, "m").generation_params().enable_thinking is False
    app = make_app(tiny_llama_gguf, store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await ready(pilot)
        await send(pilot, "hello")
        for choice, expected in (("on", True), ("default", None), ("off", False)):
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#thinking", Select).value = choice
            app.screen.action_save()
            await pilot.pause()
            assert screen.settings.generation_params().enable_thinking is expected
            assert store.get_conversation(screen.chat_id).settings["thinking"] is expected
