"""Names read from a model file, made fit for a one-line message (a crafted name can hold anything)."""

from __future__ import annotations


def shown(name: object, limit: int = 60) -> str:
    """The name itself when it is printable and short, else a quoted, cut-down repr: always one line."""
    text = str(name)
    return text if text.isprintable() and len(text) <= limit else repr(text[:limit])
