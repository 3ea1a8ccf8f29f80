"""One line above the input while chats cannot be saved: what is wrong, where the file is, what to do."""

from __future__ import annotations

from textual.widgets import Static


class StoreProblemLine(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)  # the text holds paths, which may hold [brackets]
        self.display = False

    def show(self, problem: str) -> None:
        self.update(f"Not saving chats: {problem}. Send a message to continue in a fresh chat file.")
        self.display = True

    def hide(self) -> None:
        self.update("")
        self.display = False
