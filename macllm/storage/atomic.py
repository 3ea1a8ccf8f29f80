"""Atomic writes: readers only ever see the old file or folder, or the finished new one.

`atomic_write` writes a file in a temporary sibling, fsyncs it and renames it over the target. For a
folder, the new folder is filled in a temporary sibling; the old one (if any) is moved aside, the new one
renamed into place, and only then is the old one removed. A crash at any point leaves either the
previous folder or the new one under the target name (plus a hidden leftover at worst), never half.

What these write is private: files 0600, folders 0700 (chats, notes, adapters and models are the user's own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from macllm.errors import MacllmError
from macllm.paths import PRIVATE_FILE, PRIVATE_FOLDER, private_folder


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` in one step: a crash leaves the old content or the new, never half."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: 0600, whatever the umask
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_folder(new: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(out: Path, overwrite: bool = False, exists_hint: str = "choose another name or remove it"
                  ) -> Iterator[Path]:
    """Yields an empty temporary folder to fill; on success it becomes `out`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise MacllmError(f"{out} already exists; {exists_hint}")
    private_folder(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # mkdtemp: 0700
    except OSError as e:  # e.g. a read-only folder: said before any work is done
        raise MacllmError(f"cannot write into {out.parent}: {e.strerror or e}") from None
    try:
        yield tmp
        make_private(tmp)
        replace_folder(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MacllmError(f"could not write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_private(folder: Path) -> None:
    """Files 0600 and folders 0700 throughout `folder` (one we just filled: callers write with plain open()).
    Symlinks are left alone: chmod would change whatever they point to."""
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, PRIVATE_FOLDER), (files, PRIVATE_FILE)):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, mode)
