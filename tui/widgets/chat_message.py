"""One message in the conversation: a role label and its Markdown body, streamed for answers. A reasoning
model's thinking streams into a dimmed block above the answer that collapses when the answer starts."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Collapsible, Label, Markdown, Static

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System"}


THINKING_TITLE, THOUGHT_TITLE = "Thinking…", "Thinking"


class ChatMessage(Vertical):
    """`tokens` keeps the answer's token events for the inspector; `reasoning` is a reasoning model's thinking
    (kept in meta["reasoning"] when stored)."""

    DEFAULT_CSS = """
    ChatMessage .reasoning {
        background: transparent;
        border-top: none;
        padding: 0;
        color: $text-muted;
    }
    ChatMessage .reasoning-text {
        text-style: dim italic;
        padding-left: 2;
    }
    """

    def __init__(self, role: str, content: str = "", meta: dict | None = None, finish_reason: str | None = None,
                 message_id: int | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.set_class(finish_reason == "cancelled", "stopped")  # a reopened chat looks as it did live
        self.role = role
        self.content = content
        self.meta = dict(meta or {})
        self.finish_reason = finish_reason
        self.message_id = message_id
        self.tokens: list = []
        self.reasoning: str = str(self.meta.get("reasoning") or "")
        self._stream = None

    def compose(self) -> ComposeResult:
        yield Label(self._label_text(), classes="role")
        if self.reasoning:  # a reopened chat: the thinking is done, so it starts collapsed
            yield self._thinking_block(collapsed=True)
        yield Markdown(self.content, classes="body")
        sources = Label(self._sources_text(), classes="sources")
        sources.display = bool(self.meta.get("sources"))  # no empty row under ordinary messages
        yield sources

    def _sources_text(self) -> str:
        sources = self.meta.get("sources") or []
        if not sources:
            return ""
        lines = [f"[{i}] {s['path']}:{s['line_start']}-{s['line_end']}" for i, s in enumerate(sources, start=1)]
        return "Sources (Ctrl+F to open):\n" + "\n".join(lines)

    def _label_text(self) -> str:
        text = ROLE_LABELS.get(self.role, self.role)
        adapters = self.meta.get("adapters")
        if adapters:
            text += "  · " + ", ".join(f"{k}×{v:g}" for k, v in adapters.items())
        if self.finish_reason == "cancelled":
            text += "  · stopped"
        elif self.finish_reason == "error":
            text += "  · failed"
        return text

    @property
    def markdown(self) -> Markdown:
        return self.query_one(".body", Markdown)

    def _thinking_block(self, collapsed: bool) -> Collapsible:
        return Collapsible(Static(self.reasoning, markup=False, classes="reasoning-text"),
                           title=THOUGHT_TITLE if collapsed else THINKING_TITLE, collapsed=collapsed,
                           classes="reasoning")

    @property
    def thinking(self) -> Collapsible | None:
        """The reasoning block; None for a message without thinking (nothing is shown for it)."""
        found = self.query(".reasoning")
        return found.first(Collapsible) if found else None

    async def append_reasoning(self, text: str) -> None:
        """Stream more thinking into the reasoning block, open while the model thinks."""
        if not text:
            return
        self.reasoning += text
        await self._show_reasoning(collapsed=False)

    async def _show_reasoning(self, collapsed: bool) -> None:
        if self.thinking is None:
            await self.mount(self._thinking_block(collapsed), before=self.markdown)
        else:
            self.query_one(".reasoning-text", Static).update(self.reasoning)

    def _collapse_thinking(self) -> None:
        block = self.thinking
        if block is not None and block.title != THOUGHT_TITLE:
            block.collapsed = True
            block.title = THOUGHT_TITLE

    async def append(self, text: str) -> None:
        """Stream more text into the body (batched by Textual when it arrives faster than it renders)."""
        if not text:
            return
        self._collapse_thinking()
        self.content += text
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(text)

    async def finish(self, finish_reason: str | None, meta: dict | None = None) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.finish_reason = finish_reason
        if meta:
            self.meta.update(meta)
        if self.reasoning:  # thinking held back to the end arrives with the result
            await self._show_reasoning(collapsed=bool(self.content))
        if self.content:
            self._collapse_thinking()
        await self.markdown.update(self.content)
        self.query_one(".role", Label).update(self._label_text())
        sources = self.query_one(".sources", Label)
        sources.update(self._sources_text())
        sources.display = bool(self.meta.get("sources"))
        self.set_class(finish_reason == "cancelled", "stopped")
