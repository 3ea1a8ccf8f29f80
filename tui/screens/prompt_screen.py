"""Small modal dialogs: ask for one line of text, or confirm an action (by default a destructive one)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from tui.keymap import bindings


class PromptScreen(ModalScreen[str | None]):
    SCOPE = "prompt"
    BINDINGS = bindings(SCOPE)

    def __init__(self, title: str, value: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.value, id="prompt-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class ConfirmScreen(ModalScreen[bool]):
    SCOPE = "confirm"
    BINDINGS = bindings(SCOPE)

    def __init__(self, question: str, yes: str = "Delete", no: str = "Cancel", yes_variant: str = "error") -> None:
        super().__init__(classes="dialog-screen")
        self.question = question
        self.labels = (yes, no)
        self.yes_variant = yes_variant

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="dialog-title", markup=False)  # paths may hold [brackets]
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.labels[0], variant=self.yes_variant, id="yes")  # type: ignore[arg-type]
                yield Button(self.labels[1], id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")
