"""Choose a model: local models and the built-in catalog (shown when loading fails, or on demand)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from tui.keymap import bindings


def row_detail(model: dict) -> str:
    """Architecture, implementation ("own" / "mlx-lm"), size, quantization and where it is, as one dim line."""
    if model.get("source") == "hf":
        status = "Hugging Face cache"
    else:
        status = "downloaded" if model.get("pulled") else "download on first use"
    return " · ".join(str(x) for x in (model.get("architecture"), model.get("implementation"), model.get("params"),
                                       model.get("quantization"), status) if x)


class ModelPicker(ModalScreen[str | None]):
    SCOPE = "picker"
    BINDINGS = bindings(SCOPE)

    def __init__(self, models: list[dict], reason: str | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.models = models
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label("Choose a model", classes="dialog-title")
            if self.reason:
                yield Label(self.reason, classes="error-text")
            options = []
            for m in self.models:
                options.append(Option(f"{escape(m['name'])}  [dim]{escape(row_detail(m))}[/dim]", id=m["name"]))
            yield OptionList(*options, id="models")
            yield Label("…or a .gguf path, a model folder or a Hugging Face repo id:")
            yield Input(placeholder="owner/name or /path/to/model.gguf", id="custom")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)
