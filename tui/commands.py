"""Command palette entries for every action of the chat screen."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.screens.chat import ChatScreen

ACTIONS = (  # (title, help, screen action)
    ("New chat", "Start a new conversation (Ctrl+N)", "new_chat"),
    ("Stop answer", "Stop generating; keep the partial answer (Esc)", "stop"),
    ("Regenerate", "Answer the last message again (Ctrl+R)", "regenerate"),
    ("Edit last message", "Put the last message back in the input to edit and resend (Ctrl+L)", "edit_last"),
    ("Token inspector", "Tokens of the last answer with probabilities and alternatives (Ctrl+T)", "inspect"),
    ("Adapters", "Swap or blend LoRA adapters mid-conversation (F4)", "adapters"),
    ("Notes", "Answer from your notes with citations; index a folder (Ctrl+G)", "notes"),
    ("Sources of the last notes answer", "Open the cited chunks (Ctrl+F)", "sources"),
    ("Chat settings", "Model, system prompt, temperature, top-p, min-p, max tokens (Ctrl+S)", "settings"),
    ("Rename chat", "Give this chat a title (F2)", "rename_chat"),
    ("Delete chat", "Delete this chat for good (F8)", "delete_chat"),
    ("Copy last answer", "Copy to the clipboard (F5)", "copy_last"),
    ("Export chat as Markdown", "Write this chat to a .md file (Ctrl+O)", "export_chat"),
    ("Show or hide chats", "Toggle the list of saved chats (Ctrl+B)", "toggle_chats"),
)
APP_ACTIONS = (
    ("Switch model", "Pick a local or catalog model", "pick_model"),
    ("Train an adapter on notes", "Fine-tune a LoRA adapter on a notes folder (F9)", "train"),
    ("Use the newly trained adapter", "Swap in the adapter the last training made (F3)", "use_trained_adapter"),
    ("Help", "Keys and what they do (F1)", "help"),
)


class MacllmCommands(Provider):
    def _all(self):
        screen = self.app.screen
        if isinstance(screen, ChatScreen):
            for title, help_text, action in ACTIONS:
                yield title, help_text, partial(screen.run_action, action)
        for title, help_text, action in APP_ACTIONS:
            yield title, help_text, partial(self.app.run_action, action)

    async def discover(self) -> Hits:
        for title, help_text, run in self._all():
            yield DiscoveryHit(title, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._all():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, help=help_text)
