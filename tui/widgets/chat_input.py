"""The message input: Enter sends; Shift+Enter or Ctrl+J inserts a newline (keys from the keymap)."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from tui.keymap import key_names

SEND_KEYS = key_names("chat", "send")
NEWLINE_KEYS = key_names("chat", "newline")


class ChatInput(TextArea):
    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        if event.key in SEND_KEYS:
            event.prevent_default()
            event.stop()
            text = self.text.strip()
            if text:
                self.post_message(self.Submitted(text))
            return
        if event.key in NEWLINE_KEYS:
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        await super()._on_key(event)
