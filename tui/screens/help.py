"""F1: what the keys do, from the keymap (the same table as the bindings, the palette and the README)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

from tui.keymap import bindings, help_markdown

INTRO = """\
# macllm

A model running on this machine. Nothing you type leaves it.
"""

OUTRO = """\
**Token inspector.** Each token of the last answer is coloured by the probability it had when it
was sampled (green: confident, red: a guess). Move with ←/→ to see the five most likely
alternatives at that point.

The status bar shows the model, decode speed, time to first token, how much of the context window
the chat uses, and peak memory.
"""


class HelpScreen(ModalScreen):
    SCOPE = "help"
    BINDINGS = bindings(SCOPE)

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Markdown("\n".join((INTRO, help_markdown(), OUTRO)))
