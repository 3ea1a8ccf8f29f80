"""Where macllm keeps its files: one home folder, overridable with $MACLLM_HOME.

The home holds chats, notes indexes and adapters, so it is private: created 0700, and a home left looser
(by an older macllm, or by hand) is tightened once per process, with one stderr line if it held anything. Only
the home itself is changed, never the files in it: its mode alone keeps other users out.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import platformdirs

from macllm.errors import MacllmError

PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600

_checked_homes: set[Path] = set()  # homes whose mode this process has already checked


def macllm_home() -> Path:
    override = os.environ.get("MACLLM_HOME")
    home = Path(override).expanduser() if override else Path(platformdirs.user_data_dir("macllm"))
    private_folder(home)
    if home not in _checked_homes:
        _checked_homes.add(home)
        _tighten(home)
    return home


def models_dir() -> Path:
    return _subdir("models")


def adapters_dir() -> Path:
    return _subdir("adapters")


def private_folder(path: Path) -> Path:
    """Create `path` (and missing parents) if needed; the folders created are 0700. Existing ones keep their mode."""
    try:
        path.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
    except FileExistsError:
        raise MacllmError(f"{path} is a file, not a folder; move it or choose another place") from None
    except OSError as e:
        raise MacllmError(f"cannot create the folder {path}: {e.strerror or e}") from None
    return path


def create_private_file(path: Path) -> None:
    """Create an empty 0600 file at `path` unless something is there already (others then open it, e.g. SQLite)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass


def private_opener(path: str, flags: int) -> int:
    """For open(..., opener=private_opener): a file it creates is 0600 (umask aside, which only removes bits)."""
    return os.open(path, flags, PRIVATE_FILE)


def _subdir(name: str) -> Path:
    return private_folder(macllm_home() / name)


def _tighten(home: Path) -> None:
    try:
        current = stat.S_IMODE(home.stat().st_mode)
        if not current & 0o077:
            return
        private = current & PRIVATE_FOLDER
        held_something = any(True for _ in home.iterdir())  # one entry is enough: the files are not walked
        os.chmod(home, private)
    except OSError as e:
        print(f"macllm: warning: {home} is open to other users and could not be made private: {e.strerror or e}",
              file=sys.stderr)
        return
    if held_something:  # an empty home exposed nothing: tightening it needs no word
        print(f"macllm: made {home} private (mode {current:o} -> {private:o}): it holds your chats and notes",
              file=sys.stderr)
