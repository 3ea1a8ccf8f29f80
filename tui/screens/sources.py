"""The sources of a notes answer: pick a citation to read the cited chunk with its path and lines."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Markdown, OptionList
from textual.widgets.option_list import Option

from tui.keymap import bindings


def source_title(number: int, source: dict) -> str:
    heading = f" — {source['heading']}" if source.get("heading") else ""
    return f"[{number}] {source['path']}:{source['line_start']}-{source['line_end']}{heading}"


class SourcesScreen(ModalScreen[None]):
    SCOPE = "sources"
    BINDINGS = bindings(SCOPE)

    def __init__(self, sources: list[dict], cited: list[int]) -> None:
        super().__init__(classes="dialog-screen")
        self.sources = sources
        self.cited = set(cited)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog sources"):
            yield Label("Sources — Enter opens the cited chunk", classes="dialog-title")
            yield OptionList(*[Option(source_title(i, s) + ("" if i in self.cited else "  (not cited)"), id=str(i))
                               for i, s in enumerate(self.sources, start=1)], id="source-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        number = int(event.option.id)
        self.app.push_screen(ChunkScreen(number, self.sources[number - 1]))


class ChunkScreen(ModalScreen[None]):
    SCOPE = "chunk"
    BINDINGS = bindings(SCOPE)

    def __init__(self, number: int, source: dict) -> None:
        super().__init__(classes="dialog-screen")
        self.number = number
        self.source = source

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog chunk"):
            yield Label(source_title(self.number, self.source), classes="dialog-title", id="chunk-title")
            yield Markdown(self.source.get("text", ""), id="chunk-text")
