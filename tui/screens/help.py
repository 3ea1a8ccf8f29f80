"""F1: what the keys do."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# macllm

A model running on this machine. Nothing you type leaves it.

| key | does |
|---|---|
| Enter | send |
| Shift+Enter, Ctrl+J | new line in the message |
| Esc | stop the answer (the partial answer is kept, marked *stopped*) |
| Ctrl+R | regenerate the last answer |
| Ctrl+L | edit the last message and resend it |
| Ctrl+N | new chat |
| Ctrl+B | show / hide the list of chats |
| F2 | rename this chat |
| F8 | delete this chat |
| Ctrl+S | chat settings: model, system prompt, temperature, top-p, min-p, max tokens |
| Ctrl+T | token inspector for the last answer |
| Ctrl+G | notes: answer from your notes with citations, choose an index, (re)index a folder |
| Ctrl+F | sources of the last notes answer: open a cited chunk with its path and lines |
| F9 | train a LoRA adapter on a notes folder; F3 swaps the finished one in |
| F4 | adapters: swap one in (Enter), blend several (B, +/−, A), or none (N) — mid-conversation |
| F5 | copy the last answer |
| Ctrl+O | export this chat as Markdown |
| Ctrl+P | command palette: every action |
| F1 | this help |
| Ctrl+Q | quit |

**Token inspector.** Each token of the last answer is coloured by the probability it had when it
was sampled (green: confident, red: a guess). Move with ←/→ to see the five most likely
alternatives at that point.

The status bar shows the model, decode speed, time to first token, how much of the context window
the chat uses, and peak memory.
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Markdown(HELP)
