"""A folder that refuses new files and folders, for tests that run as root (root ignores file modes)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def read_only(monkeypatch, folder: Path) -> None:
    """Make `folder` refuse new files and folders the way a 0555 folder does for a normal user.

    The tests run as root, and root ignores file modes (chmod 0555 would change nothing), so creation inside
    the folder is refused where Python asks the OS for it: os.open (files, tempfile.mkstemp) and os.mkdir
    (Path.mkdir, tempfile.mkdtemp)."""
    inside = str(folder.resolve()) + os.sep

    def guard(real):
        def refuse(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(inside):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)
        return refuse

    monkeypatch.setattr(os, "open", guard(os.open))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir))
