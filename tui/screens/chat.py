"""The main screen: saved chats on the left, the conversation, the input, and a status bar."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer

from macllm.errors import MacllmError
from macllm.lora.store import list_adapters
from macllm.rag.answer import CITATION
from macllm.storage.chat_store import ChatStoreError, StoredConversation, auto_title
from tui.events import (
    AnswerFailed,
    AnswerFinished,
    AnswerPrefill,
    AnswerSources,
    AnswerToken,
    ModelLoaded,
)
from tui.keymap import bindings
from tui.screens.chat_saving import ChatSaving, store_guarded
from tui.screens.prompt_screen import ConfirmScreen, PromptScreen
from tui.settings import ChatSettings
from tui.state import AppState
from tui.widgets.chat_input import ChatInput
from tui.widgets.chat_list import ChatList
from tui.widgets.chat_message import ChatMessage
from tui.widgets.status_bar import StatusBar
from tui.widgets.store_problem import StoreProblemLine


class ChatScreen(ChatSaving):
    SCOPE = "chat"
    BINDINGS = bindings(SCOPE)

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state
        self.chat_id: str | None = None
        self.settings = ChatSettings()
        self.answer_id: int | None = None
        self.answer_widget: ChatMessage | None = None

    # --- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield ChatList(id="chats")
            with Vertical(id="chat-pane"):
                yield VerticalScroll(id="conversation")
                yield StoreProblemLine(id="store-problem")
                yield ChatInput(id="input")
        yield StatusBar(id="status")
        yield Footer()

    @property
    def bridge(self):
        return self.app.bridge

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    async def on_mount(self) -> None:
        self.conversation.anchor()
        self.query_one(ChatInput).focus()
        chats = self.saved_chats()
        if chats:
            await self.open_chat(chats[0].id)
        else:
            await self.new_chat()
        if self.app.store_problem:  # the app started without a usable chat file: say so at once
            self.show_store_problem()
            self.offer_fresh_store()

    # --- chats ----------------------------------------------------------------------------
    def default_settings(self) -> ChatSettings:
        return ChatSettings.from_dict(self.state.chat_defaults, self.state.model_source)

    def saved_chats(self) -> list[StoredConversation]:
        """The chat list; empty without a chat file (the problem line says why)."""
        if self.app.store is None:
            return []
        try:
            return self.store.list_conversations()
        except ChatStoreError as e:
            self.store_failed(e)
            return []

    async def refresh_chat_list(self) -> None:
        await self.query_one(ChatList).show(self.saved_chats(), self.chat_id)

    async def new_chat(self) -> None:
        self.chat_id = None
        self.settings = self.default_settings()
        await self.conversation.remove_children()
        await self.refresh_chat_list()
        self.update_status()

    @store_guarded
    async def open_chat(self, chat_id: str) -> None:
        stored = self.store.get_conversation(chat_id)
        self.chat_id = chat_id
        self.settings = ChatSettings.from_dict(stored.settings, self.state.model_source)
        await self.conversation.remove_children()
        widgets = [ChatMessage(m.role, m.content, m.meta, m.finish_reason, m.id)
                   for m in self.store.messages(chat_id) if m.role != "system"]
        if widgets:
            await self.conversation.mount_all(widgets)
        self.conversation.scroll_end(animate=False)
        await self.refresh_chat_list()
        self.app.ensure_model(self.settings.model)
        self.update_status()

    def ensure_chat(self, first_text: str) -> str:
        if self.chat_id is None:
            title = auto_title(first_text)
            self.chat_id = self.store.create_conversation(title, self.settings.to_dict()).id
        return self.chat_id

    def stored_messages(self) -> list[dict]:
        return [_history_message(m) for m in self.store.messages(self.chat_id)]

    # --- sending and streaming ------------------------------------------------------------
    @on(ChatInput.Submitted)
    async def send(self, event: ChatInput.Submitted) -> None:
        if self.bridge.busy:
            self.notify("Still answering: press Esc to stop it first.", severity="warning")
            return
        if not self.bridge.ready:
            self.notify("The model is still loading…", severity="warning")
            return
        try:
            chat_id = self.ensure_chat(event.text)
            stored = self.store.add_message(chat_id, "user", event.text)
        except ChatStoreError as e:
            self.store_failed(e, offer=True)  # the message stays in the input: it was not saved
            return
        self.query_one(ChatInput).clear()
        await self.conversation.mount(ChatMessage("user", event.text, message_id=stored.id))
        await self.start_answer()
        await self.refresh_chat_list()

    @store_guarded
    async def start_answer(self) -> None:
        history = self.stored_messages()  # read before anything is shown: a failed read starts nothing
        meta = {"model": self.bridge.info.source if self.bridge.info else None}
        if self.bridge.active_adapters:  # each answer records which adapters produced it
            meta["adapters"] = dict(self.bridge.active_adapters)
        self.answer_widget = ChatMessage("assistant", meta=meta)
        await self.conversation.mount(self.answer_widget)
        self.conversation.scroll_end(animate=False)
        params = self.settings.generation_params()
        if self.state.notes_mode:  # a single-turn answer from the notes index, with citations
            question = history[-1]["content"]
            self.answer_widget.meta["notes_index"] = self.state.notes_index or "notes"
            self.answer_id = self.bridge.ask_notes(question, self.state.notes_index, params, target=self,
                                                   chat_id=self.chat_id)
            self.status.state = "searching notes…"
            return
        system = self.settings.system or None
        self.answer_id = self.bridge.answer(self.chat_id, system, history, params, target=self)
        self.status.state = "answering…"

    def on_answer_sources(self, message: AnswerSources) -> None:
        if message.answer_id == self.answer_id and self.answer_widget is not None:
            self.answer_widget.meta["sources"] = [s.as_json() for s in message.sources]
            self.status.state = "answering from notes…"

    def on_answer_prefill(self, message: AnswerPrefill) -> None:
        if message.answer_id == self.answer_id:
            reading = "reading notes" if self.state.notes_mode else "reading"
            self.status.state = f"{reading}… {message.done}/{message.total} tokens"

    async def on_answer_token(self, message: AnswerToken) -> None:
        if message.answer_id != self.answer_id or self.answer_widget is None:
            return
        if self.status.state.startswith("reading"):  # the prefill is over
            self.status.state = "answering from notes…" if self.state.notes_mode else "answering…"
        self.answer_widget.tokens.append(message.event)
        await self.answer_widget.append_reasoning(message.event.reasoning)
        await self.answer_widget.append(message.event.text)

    async def on_answer_finished(self, message: AnswerFinished) -> None:
        if message.answer_id != self.answer_id or self.answer_widget is None:
            return
        result = message.result
        s = result.stats
        meta = {"stats": {
            "prompt_tokens": s.prompt_tokens, "generation_tokens": s.generation_tokens,
            "generation_tps": round(s.generation_tps, 2), "ttft_s": round(s.ttft_s, 4)}}
        if s.draft_proposed:
            meta["stats"].update(draft_proposed=s.draft_proposed, draft_accepted=s.draft_accepted)
        widget = self.answer_widget
        widget.content = result.text
        if result.reasoning:  # stored with the answer: shown when reopened, sent back as the template says
            meta["reasoning"] = widget.reasoning = result.reasoning
        await widget.finish(result.finish_reason, meta)
        self.answer_id, self.answer_widget = None, None
        self.status.state = "stopped" if result.finish_reason == "cancelled" else ""
        self.status.decode_tps = s.generation_tps
        self.status.acceptance = s.acceptance_rate if s.acceptance_rate is not None else -1.0
        self.status.ttft_ms = s.ttft_s * 1000
        self.status.memory_mb = s.peak_memory_mb
        self.update_status()
        try:
            stored = self.store.add_message(self.chat_id, "assistant", result.text, result.finish_reason, widget.meta)
        except ChatStoreError as e:
            self.store_failed(e)  # the answer stays on screen; a fresh file takes it along
            return
        widget.message_id = stored.id

    async def on_answer_failed(self, message: AnswerFailed) -> None:
        if message.answer_id != self.answer_id:
            return
        if self.answer_widget is not None:
            await self.answer_widget.finish("error")
        self.answer_id, self.answer_widget = None, None
        self.status.state = ""
        hint = " Ctrl+L takes your last message back to edit it; Ctrl+N starts a new chat."
        self.notify(message.error + (hint if "context" in message.error else ""), title="Generation failed",
                    severity="error", timeout=10)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.update_status()

    def update_status(self) -> None:
        if not self.query(StatusBar):  # not composed yet
            return
        info = self.bridge.info
        state = "" if self.bridge.ready else " (loading…)" if self.bridge.loading else " (not loaded)"
        # Our own implementation is the norm; a model on mlx-lm's class says so (features may differ).
        runs_on = f" ({info.implementation})" if info and info.implementation != "own" else ""
        self.status.model = ((info.source if info else None) or self.settings.model or "no model") + runs_on + state
        self.status.context_length = info.context_length if info else 0
        self.status.adapters = ", ".join(f"{k}×{v:g}" for k, v in self.bridge.active_adapters.items())
        self.status.notes = f"notes: {self.state.notes_index or 'notes'}" if self.state.notes_mode else ""
        self.status.context_used = self.bridge.context_used(self.chat_id) if self.chat_id else 0

    # --- actions ----------------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.bridge.busy:
            self.bridge.stop()

    async def action_new_chat(self) -> None:
        if self.bridge.busy:
            self.bridge.stop()
        await self.new_chat()
        self.query_one(ChatInput).focus()

    def last_message_widget(self, role: str) -> ChatMessage | None:
        found = [w for w in self.conversation.query(ChatMessage) if w.role == role]
        return found[-1] if found else None

    @store_guarded
    async def action_regenerate(self) -> None:
        if self.bridge.busy or self.chat_id is None or not self.bridge.ready:
            return
        messages = self.store.messages(self.chat_id)
        if not messages or messages[-1].role != "assistant":
            self.notify("Nothing to regenerate yet.")
            return
        self.store.delete_messages_from(self.chat_id, messages[-1].seq)
        widget = self.last_message_widget("assistant")
        if widget is not None:
            await widget.remove()
        await self.start_answer()

    @store_guarded
    async def action_edit_last(self) -> None:
        if self.bridge.busy or self.chat_id is None:
            return
        users = [m for m in self.store.messages(self.chat_id) if m.role == "user"]
        if not users:
            return
        last = users[-1]
        self.store.delete_messages_from(self.chat_id, last.seq)
        widgets = list(self.conversation.query(ChatMessage))
        ids = [w.message_id for w in widgets]
        if last.id in ids:
            for w in widgets[ids.index(last.id):]:
                await w.remove()
        chat_input = self.query_one(ChatInput)
        chat_input.text = last.content
        chat_input.focus()
        chat_input.move_cursor(chat_input.document.end)
        self.notify("Edit the message and press Enter to resend it.")

    def action_inspect(self) -> None:
        from tui.screens.inspector import TokenInspector  # start-up time: loaded when first opened

        widget = self.last_message_widget("assistant")
        if widget is None or not widget.tokens:
            self.notify("Token details exist for answers generated in this session.")
            return
        self.app.push_screen(TokenInspector(widget.tokens, self.bridge.engine.tokenizer))

    def action_settings(self) -> None:
        from tui.screens.settings_screen import SettingsScreen  # start-up time: loaded when first opened

        cap = self.bridge.prompt_cache_mb()
        screen = SettingsScreen(self.settings, self.app.model_choices(), prompt_cache_mb=cap)

        def apply(result: ChatSettings | None) -> None:
            if result is not None:
                if screen.prompt_cache_mb is not None and screen.prompt_cache_mb != cap:
                    problem = self.bridge.set_prompt_cache_mb(screen.prompt_cache_mb)
                    if problem:
                        self.notify(problem, severity="warning", timeout=8)
                self.apply_settings(result)

        self.app.push_screen(screen, apply)

    @store_guarded
    def apply_settings(self, result: ChatSettings) -> None:
        self.settings = result
        self.app.ensure_model(result.model)
        self.notify("Settings apply from the next answer.")
        if self.chat_id is not None:
            self.store.update_settings(self.chat_id, result.to_dict())

    def action_notes(self) -> None:
        from tui.screens.notes import NotesScreen  # start-up time: loaded when first opened

        self.app.push_screen(NotesScreen(self.state, self.bridge), lambda _: self.update_status())

    def action_sources(self) -> None:
        from tui.screens.sources import SourcesScreen  # start-up time: loaded when first opened

        answers = [w for w in self.conversation.query(ChatMessage) if w.meta.get("sources")]
        if not answers:
            self.notify("No answer from notes yet: Ctrl+G turns on answers from your notes.")
            return
        widget = answers[-1]
        cited = [int(n) for n in CITATION.findall(widget.content)]
        self.app.push_screen(SourcesScreen(widget.meta["sources"], cited))

    def action_adapters(self) -> None:
        from tui.screens.adapters import AdaptersScreen  # start-up time: loaded when first opened

        if not self.bridge.ready:
            self.notify("The model is still loading…", severity="warning")
            return

        def chosen(scales: dict | None) -> None:
            if scales is not None and scales != self.bridge.active_adapters:
                self.bridge.apply_adapters(scales)

        self.app.push_screen(AdaptersScreen(list_adapters(), self.bridge.active_adapters,
                                            self.bridge.model_fingerprint()), chosen)

    def action_toggle_chats(self) -> None:
        chats = self.query_one(ChatList)
        chats.display = not chats.display

    @on(ChatList.ChatChosen)
    @store_guarded
    async def chat_chosen(self, event: ChatList.ChatChosen) -> None:
        if event.chat_id == self.chat_id:
            return
        if self.bridge.busy:
            self.bridge.stop()
        await self.open_chat(event.chat_id)

    @store_guarded
    def action_rename_chat(self) -> None:
        if self.chat_id is None:
            return
        current = self.store.get_conversation(self.chat_id).title

        async def rename(title: str | None) -> None:
            if title:
                await self.rename_chat(title)

        self.app.push_screen(PromptScreen("Rename chat", current), rename)

    @store_guarded
    async def rename_chat(self, title: str) -> None:
        if self.chat_id is not None:
            self.store.rename_conversation(self.chat_id, title)
            await self.refresh_chat_list()

    @store_guarded
    def action_delete_chat(self) -> None:
        if self.chat_id is None:
            return
        title = self.store.get_conversation(self.chat_id).title

        async def delete(yes: bool | None) -> None:
            if yes:
                await self.delete_chat()

        self.app.push_screen(ConfirmScreen(f"Delete “{title}”? This cannot be undone."), delete)

    @store_guarded
    async def delete_chat(self) -> None:
        if self.chat_id is None:
            return
        messages = self.stored_messages()  # read first: the prompt cache's copies of this chat go with it
        self.store.delete_conversation(self.chat_id)
        self.bridge.forget(self.chat_id, self.settings.system or None, messages)
        chats = self.saved_chats()
        if chats:
            await self.open_chat(chats[0].id)
        else:
            await self.new_chat()

    def action_copy_last(self) -> None:
        widget = self.last_message_widget("assistant")
        if widget is None:
            return
        self.app.copy_text(widget.content)

    @store_guarded
    def action_export_chat(self) -> None:
        if self.chat_id is None:
            return
        try:
            path = self.app.export_chat(self.store, self.chat_id)
        except ChatStoreError:
            raise
        except MacllmError as e:  # e.g. the current folder is read-only
            self.notify(str(e), title="Not exported", severity="error", timeout=10)
            return
        self.notify(f"Exported to {path}")


def _history_message(message) -> dict:
    """A stored message as the engine gets it; an answer's thinking travels as reasoning_content."""
    out = {"role": message.role, "content": message.content}
    if (message.meta or {}).get("reasoning"):
        out["reasoning_content"] = message.meta["reasoning"]
    return out
