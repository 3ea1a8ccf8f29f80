"""Chat files with problems, for the store and app tests: read-only, damaged, full of chats."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from macllm.storage.chat_store import ChatStore

PAGE = 4096  # SQLite's default page size, which ChatStore keeps


def filled_store(path: Path, chats: int = 30, messages: int = 10) -> None:
    """A real chat file of about 36 pages, closed (its WAL folded into the file)."""
    with ChatStore(path) as store:
        for i in range(chats):
            conv = store.create_conversation(f"chat {i}")
            for j in range(messages):
                store.add_message(conv.id, "user", f"message {i}.{j} " + "x" * 300)


def damage_pages(path: Path, pages: tuple[int, ...] = (3, 7, 12)) -> None:
    """Overwrite some pages in the middle with noise, as a failing disk would (the header stays intact)."""
    noise = random.Random(13)
    with open(path, "r+b") as f:
        for page in pages:
            f.seek(page * PAGE)
            f.write(bytes(noise.randrange(256) for _ in range(PAGE)))


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` cannot be written while inside. Tests run as root here, and root ignores file modes, so for
    root the file gets the immutable attribute (`chattr +i`, which binds root too); others get mode 0444.
    The test is skipped where neither is possible (e.g. a file system without attributes)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a file read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)  # else pytest cannot remove tmp_path
