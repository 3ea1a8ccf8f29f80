"""Every key of the app in one table: the screens' BINDINGS, the command palette, the F1 help and the
README's key table are all made from it, so they cannot disagree (tests/test_keymap.py compares the
README with `markdown_table(README_SCOPES)`; `python -m tui.keymap` prints that table).

A row belongs to a scope: "app" keys work everywhere, the others on one screen or panel, whose class
says which with `SCOPE`. Rows with `binding=False` are handled elsewhere (the message input, Textual's
own palette key) and are listed here so the help and README still show them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma-separated ("escape,q"); "" for palette-only actions
    action: str  # the action run on the scope's screen (or the app for "app")
    label: str  # the footer's short label
    does: str  # one line for the help and the README
    scope: str
    footer: bool = True
    palette: bool = False
    title: str = ""  # the palette's name for it when the footer label is too terse
    binding: bool = True
    priority: bool = False
    documented: bool = True

    @property
    def palette_title(self) -> str:
        return self.title or self.label


SCOPE_TITLES = {  # the order of the help's sections
    "chat": "Chat",
    "app": "Everywhere",
    "train": "Train screen (F9)",
    "adapters": "Adapters panel (F4)",
    "inspector": "Token inspector (Ctrl+T)",
    "settings": "Chat settings (Ctrl+S)",
    "help": "Help",
    "notes": "Notes panel (Ctrl+G)",
    "sources": "Sources (Ctrl+F)",
    "chunk": "A cited chunk",
    "picker": "Model picker",
    "prompt": "Text prompt",
    "confirm": "Confirmation",
}
HELP_SCOPES = ("chat", "app", "train", "adapters", "inspector", "settings")
README_SCOPES = ("chat", "app")

KEYMAP: tuple[Key, ...] = (
    # The chat screen; Enter and the new-line keys are the message input's own.
    Key("enter", "send", "Send", "send the message", "chat", binding=False),
    Key("shift+enter,ctrl+j", "newline", "New line", "new line in the message", "chat", binding=False),
    Key("escape", "stop", "Stop", "stop the answer (the partial answer is kept, marked *stopped*)", "chat",
        palette=True, title="Stop answer"),
    Key("ctrl+n", "new_chat", "New chat", "new chat", "chat", palette=True),
    Key("ctrl+r", "regenerate", "Regenerate", "regenerate the last answer", "chat", palette=True),
    Key("ctrl+l", "edit_last", "Edit last", "edit the last message and resend it", "chat", palette=True,
        title="Edit last message"),
    Key("ctrl+t", "inspect", "Tokens", "token inspector: the last answer's tokens, probabilities, alternatives",
        "chat", palette=True, title="Token inspector"),
    Key("ctrl+s", "settings", "Settings", "chat settings: model, system prompt, temperature, top-p, min-p, "
        "max tokens", "chat", palette=True, title="Chat settings"),
    Key("ctrl+b", "toggle_chats", "Chats", "show or hide the list of saved chats", "chat", palette=True,
        title="Show or hide chats"),
    Key("f4", "adapters", "Adapters", "adapters: swap, blend or drop LoRA adapters mid-conversation", "chat",
        palette=True),
    Key("ctrl+g", "notes", "Notes", "notes: answer from your notes with citations, choose an index, "
        "(re)index a folder", "chat", palette=True),
    Key("ctrl+f", "sources", "Sources", "sources of the last notes answer: open a cited chunk", "chat",
        footer=False, palette=True, title="Sources of the last notes answer"),
    Key("f2", "rename_chat", "Rename", "rename this chat", "chat", footer=False, palette=True,
        title="Rename chat"),
    Key("f5", "copy_last", "Copy", "copy the last answer (OSC 52; pbcopy on macOS)", "chat", footer=False,
        palette=True, title="Copy last answer"),
    Key("ctrl+o", "export_chat", "Export", "export this chat as Markdown (into the current folder)", "chat",
        footer=False, palette=True, title="Export chat as Markdown"),
    Key("f8", "delete_chat", "Delete chat", "delete this chat for good", "chat", footer=False, palette=True),
    # Everywhere.
    Key("f1", "help", "Help", "help: every key, screen by screen", "app", palette=True),
    Key("f9", "train", "Train", "train a LoRA adapter on a notes folder (progress, loss plot; chatting goes "
        "on meanwhile)", "app", palette=True, title="Train an adapter on notes"),
    Key("f3", "use_trained_adapter", "Use new adapter", "swap in the adapter the last training made", "app",
        footer=False, palette=True, title="Use the newly trained adapter"),
    Key("", "pick_model", "Switch model", "switch model: a local or catalog model, a .gguf path or a repo id",
        "app", palette=True),
    Key("ctrl+p", "command_palette", "Palette", "command palette: every action by name", "app",
        binding=False),
    Key("escape", "close", "Close", "close a panel or dialog", "app", binding=False),
    Key("ctrl+q", "quit", "Quit", "quit", "app"),
    # The train screen.
    Key("escape", "back", "Back to chat", "back to the chat; a run goes on", "train"),
    Key("ctrl+g", "start", "Start", "start training", "train", palette=True, title="Start training"),
    Key("f4", "cancel", "Cancel training", "stop training, keeping a checkpoint to resume from", "train",
        palette=True),
    # The adapters panel.
    Key("escape", "dismiss(None)", "Close", "close without changing anything", "adapters"),
    Key("enter", "use_only", "Use alone", "use the adapter under the cursor alone", "adapters", priority=True),
    Key("b", "toggle_blend", "Add/remove from blend", "add it to the blend, or take it out", "adapters"),
    Key("plus,equals_sign", "scale(1)", "Scale +", "raise its scale in the blend by 0.25", "adapters"),
    Key("minus", "scale(-1)", "Scale −", "lower its scale in the blend by 0.25", "adapters"),
    Key("a", "apply_blend", "Apply blend", "apply the blend", "adapters"),
    Key("n", "none", "None (base model)", "no adapters: the base model", "adapters"),
    Key("r", "retrain", "Retrain", "retrain it on its notes folder as it is now, from its weights (train screen)",
        "adapters"),
    # The token inspector.
    Key("escape,q", "dismiss", "Close", "close", "inspector"),
    Key("left,h", "move(-1)", "Previous token", "previous token", "inspector"),
    Key("right,l", "move(1)", "Next token", "next token and its five likeliest alternatives", "inspector"),
    Key("home", "jump(0)", "First", "first token", "inspector", footer=False),
    Key("end", "jump(-1)", "Last", "last token", "inspector", footer=False),
    # Dialogs: Esc closes each (documented once, under "Everywhere").
    Key("escape", "dismiss(None)", "Cancel", "close without saving", "settings", documented=False),
    Key("ctrl+s", "save", "Save", "save the settings (they apply from the next answer)", "settings"),
    Key("escape,f1,q", "dismiss", "Close", "close the help", "help", documented=False),
    Key("escape", "close", "Close", "close", "notes", documented=False),
    Key("escape", "dismiss", "Close", "close", "sources", documented=False),
    Key("escape", "dismiss", "Back", "back to the sources", "chunk", documented=False),
    Key("escape", "dismiss(None)", "Cancel", "keep the current model", "picker", documented=False),
    Key("escape", "dismiss(None)", "Cancel", "cancel", "prompt", documented=False),
    Key("escape", "dismiss(False)", "Cancel", "cancel", "confirm", documented=False),
    Key("y", "dismiss(True)", "Yes", "yes", "confirm", documented=False),
)

FUNCTION_KEY = re.compile(r"f\d+")
KEY_NAMES = {"escape": "Esc", "equals_sign": "=", "plus": "+", "minus": "−", "left": "←", "right": "→"}


def keys_in(scope: str) -> list[Key]:
    return [k for k in KEYMAP if k.scope == scope]


def bindings(scope: str) -> list[BindingType]:
    """A screen's BINDINGS."""
    return [Binding(k.keys, k.action, k.label, show=k.footer, priority=k.priority)
            for k in keys_in(scope) if k.binding and k.keys]


def key_names(scope: str, action: str) -> tuple[str, ...]:
    """The Textual key names of one action (for widgets that read keys themselves)."""
    return tuple(name for k in keys_in(scope) if k.action == action for name in k.keys.split(","))


def display(keys: str) -> str:
    """Textual key names as people write them: "shift+enter,ctrl+j" -> "Shift+Enter, Ctrl+J"."""
    def one(name: str) -> str:
        parts = name.split("+")
        return "+".join(KEY_NAMES.get(p) or (p.upper() if len(p) == 1 or FUNCTION_KEY.fullmatch(p) else p.capitalize())
                        for p in parts)

    return ", ".join(one(name) for name in keys.split(","))


def key_cell(key: Key) -> str:
    return display(key.keys) if key.keys else f"Ctrl+P: {key.palette_title}"


def markdown_table(scopes: tuple[str, ...]) -> str:
    """The documented keys of `scopes` as a Markdown table (the README's, and each section of the help)."""
    rows = ["| key | does |", "|---|---|"]
    rows += [f"| {key_cell(k)} | {k.does} |" for scope in scopes for k in keys_in(scope) if k.documented]
    return "\n".join(rows) + "\n"


def help_markdown() -> str:
    """The key sections of the F1 help."""
    return "\n".join(f"## {SCOPE_TITLES[scope]}\n\n{markdown_table((scope,))}" for scope in HELP_SCOPES)


if __name__ == "__main__":
    print(markdown_table(README_SCOPES), end="")
