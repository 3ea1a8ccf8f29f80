"""How line-mode commands show a reasoning model's thinking next to its answer."""

from __future__ import annotations

import sys

DIM, RESET = "\x1b[2m", "\x1b[0m"


class ThinkingEcho:
    """Streams a reasoning model's thinking to stderr (dimmed on a terminal) and the answer to stdout, so
    stdout holds only the answer."""

    def __init__(self) -> None:
        self.dim = sys.stderr.isatty()
        self.thinking = False

    def show(self, reasoning: str, text: str) -> None:
        if reasoning:
            sys.stderr.write((DIM if self.dim and not self.thinking else "") + reasoning)
            sys.stderr.flush()
            self.thinking = True
        if text:
            self.end_thinking()
            sys.stdout.write(text)
            sys.stdout.flush()

    def end_thinking(self) -> None:
        if self.thinking:
            sys.stderr.write((RESET if self.dim else "") + "\n\n")
            sys.stderr.flush()
            self.thinking = False

