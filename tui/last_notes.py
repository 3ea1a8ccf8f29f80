"""The notes folder (and index) the app last indexed, remembered across launches so that the app keeps
that folder indexed from the moment it starts, not only after it is indexed again in the notes panel.

Kept in $MACLLM_HOME/notes_folder.json, written atomically; a missing or unreadable file means nothing
is remembered (the app starts as it always did).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from macllm.errors import MacllmError
from macllm.paths import macllm_home
from macllm.storage.atomic import atomic_write


@dataclass(frozen=True)
class LastNotes:
    folder: str
    index: str | None  # None: the default index "notes"


def _path() -> Path:
    return macllm_home() / "notes_folder.json"


def load_last_notes() -> LastNotes | None:
    """What was remembered, if its folder still exists."""
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
        folder, index = data["folder"], data.get("index")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(folder, str) or not (index is None or isinstance(index, str)):
        return None
    return LastNotes(folder, index) if Path(folder).expanduser().is_dir() else None


def save_last_notes(folder: str, index: str | None) -> None:
    path = _path()
    try:
        atomic_write(path, json.dumps({"folder": str(Path(folder).expanduser().resolve()), "index": index}) + "\n")
    except OSError as e:
        raise MacllmError(f"cannot remember the notes folder in {path}: {e.strerror or e}; the app will not "
                          f"watch it at the next launch") from None
