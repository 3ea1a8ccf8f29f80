"""Per-chat settings: model, system prompt, temperature, top-p, min-p, max tokens, thinking; and one for every
chat, the size cap of the prompt cache on disk (read back by the caller from `prompt_cache_mb`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, TextArea

from tui.keymap import bindings
from tui.settings import ChatSettings

NUMBER_FIELDS = (  # (attribute, label, type, lower, upper)
    ("temperature", "Temperature (0 = greedy)", float, 0.0, 5.0),
    ("top_p", "Top-p (1 = off)", float, 0.01, 1.0),
    ("min_p", "Min-p (0 = off)", float, 0.0, 0.99),
    ("max_tokens", "Max tokens", int, 1, 32768),
)

# Select key -> (label, ChatSettings.thinking): a template's default is kept unless the user picks on or off.
THINKING_CHOICES: dict[str, tuple[str, bool | None]] = {
    "default": ("Model default (as its chat template says)", None),
    "on": ("On: think before answering", True),
    "off": ("Off: answer at once", False),
}


# Select key -> (label, ChatSettings.prompt_lookup).
LOOKUP_CHOICES: dict[str, tuple[str, bool | None]] = {
    "default": ("Default: on for notes answers", None),
    "on": ("On: also for chat answers", True),
    "off": ("Off", False),
}
NO_DRAFT = "(none)"


PROMPT_CACHE_LABEL = "Prompt cache on disk, all chats (MiB, 0 = off)"
PROMPT_CACHE_MAX_MB = 1024 * 1024  # as macllm.prompt_cache.limit.MAX_MB (the TUI reaches macllm through the bridge)


def thinking_key(thinking: bool | None) -> str:
    return next(key for key, (_, value) in THINKING_CHOICES.items() if value is thinking)


def lookup_key(lookup: bool | None) -> str:
    return next(key for key, (_, value) in LOOKUP_CHOICES.items() if value is lookup)


class SettingsScreen(ModalScreen[ChatSettings | None]):
    SCOPE = "settings"
    BINDINGS = bindings(SCOPE)

    def __init__(self, settings: ChatSettings, models: list[str], prompt_cache_mb: int | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.settings = settings
        self.models = list(dict.fromkeys([settings.model, *models]))
        self.prompt_cache_mb = prompt_cache_mb  # None: the field is not shown

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog settings"):
            yield Label("Chat settings", classes="dialog-title")
            yield Label("Model")
            yield Select([(m, m) for m in self.models], value=self.settings.model, allow_blank=False, id="model")
            yield Label("System prompt")
            yield TextArea(self.settings.system, id="system", classes="system-prompt")
            for name, label, _, _, _ in NUMBER_FIELDS:
                yield Label(label)
                yield Input(str(getattr(self.settings, name)), id=name)
            yield Label("Thinking (reasoning models such as Qwen3 think before answering)")
            yield Select([(label, key) for key, (label, _) in THINKING_CHOICES.items()],
                         value=thinking_key(self.settings.thinking), allow_blank=False, id="thinking")
            yield Label("Draft model (speculative decoding: a smaller model with the same tokenizer guesses, "
                        "the model checks; same answers, faster)")
            drafts = list(dict.fromkeys([NO_DRAFT, *filter(None, [self.settings.draft_model]), *self.models]))
            yield Select([(m, m) for m in drafts], value=self.settings.draft_model or NO_DRAFT, allow_blank=False,
                         id="draft_model")
            yield Label("Prompt lookup (guesses copied from the prompt, checked by the model)")
            yield Select([(label, key) for key, (label, _) in LOOKUP_CHOICES.items()],
                         value=lookup_key(self.settings.prompt_lookup), allow_blank=False, id="prompt_lookup")
            if self.prompt_cache_mb is not None:
                yield Label(PROMPT_CACHE_LABEL)
                yield Input(str(self.prompt_cache_mb), id="prompt_cache_mb")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def action_save(self) -> None:
        values = {"model": self.query_one("#model", Select).value,
                  "system": self.query_one("#system", TextArea).text.strip(),
                  "thinking": THINKING_CHOICES[str(self.query_one("#thinking", Select).value)][1],
                  "prompt_lookup": LOOKUP_CHOICES[str(self.query_one("#prompt_lookup", Select).value)][1]}
        draft = str(self.query_one("#draft_model", Select).value)
        values["draft_model"] = "" if draft == NO_DRAFT else draft
        for name, label, kind, lower, upper in NUMBER_FIELDS:
            raw = self.query_one(f"#{name}", Input).value.strip()
            try:
                value = kind(raw)
            except ValueError:
                self.notify(f"{label}: '{raw}' is not a number", severity="error")
                return
            if not lower <= value <= upper:
                self.notify(f"{label} must be between {lower} and {upper}", severity="error")
                return
            values[name] = value
        if self.prompt_cache_mb is not None:
            raw = self.query_one("#prompt_cache_mb", Input).value.strip()
            if not raw.isdigit() or int(raw) > PROMPT_CACHE_MAX_MB:
                self.notify(f"{PROMPT_CACHE_LABEL}: a whole number from 0 to {PROMPT_CACHE_MAX_MB}", severity="error")
                return
            self.prompt_cache_mb = int(raw)
        self.dismiss(ChatSettings(**values))
