"""Refuse up front a folder macllm could not write into later, so a long job (training, fusing) never spends
its time and then fails at the last write.

The only reliable test is to try: permissions, read-only mounts, ACLs and full quotas all show up as a
failed create, and os.access misses most of them (and says yes to root everywhere).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from macllm.errors import MacllmError

PROBE_PREFIX = ".macllm-write-probe-"


def nearest_existing(path: Path) -> Path:
    """`path` or the closest folder above it that exists: where the first new folder would be made."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_writable(folder: Path, hint: str) -> None:
    """Raise a one-line MacllmError unless files can be created in `folder` (or, if it does not exist yet, in the
    folder that would hold it). Creates nothing that stays: one probe file, removed at once."""
    folder = Path(folder).expanduser().absolute()
    existing = nearest_existing(folder)
    if not existing.is_dir():
        where = "" if existing == folder else f"cannot be created: {existing} "
        raise MacllmError(f"{folder} {where}is a file, not a folder; {hint}")
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or str(e)
        detail = reason if existing == folder else f"{existing}: {reason}"
        raise MacllmError(f"{folder} is not writable ({detail}); {hint}") from None
