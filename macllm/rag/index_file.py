"""Is this file a macllm notes index? Asked before anything replaces or writes into it.

`--rebuild` deletes the file it is given, so it must only ever delete one of ours: another application's
SQLite database, the chat store or a text file is refused, untouched, and so is writing into one. Ours are told
apart by the SQLite header's application id, read as raw bytes (works on an index damaged past its first page),
from the WAL when page one is newer there (a fresh index whose indexer was killed before its first checkpoint).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from macllm.errors import MacllmError

APPLICATION_ID = 0x6D6C6E78  # "mlnx", in the SQLite header: tells our index files from other SQLite files
SQLITE_MAGIC = b"SQLite format 3\0"
_WAL_MAGICS = (0x377F0682, 0x377F0683)
_PAGE_SIZES = frozenset(1 << n for n in range(9, 17))
_PAGE_ONE_BYTES = 108  # the 100-byte file header, then sqlite_master's b-tree page header


class IndexFile(Enum):
    ABSENT = "absent"
    EMPTY = "empty"  # zero bytes or a blank SQLite database (no application id, no tables): nothing to lose
    OURS = "ours"
    FOLDER = "folder"
    OTHER = "other"


def classify(path: Path) -> IndexFile:
    if not path.exists() and not path.is_symlink():
        return IndexFile.ABSENT
    if path.is_dir():
        return IndexFile.FOLDER
    if not path.is_file():  # a device, a pipe (reading it could block) or a dangling link
        return IndexFile.OTHER
    try:
        with open(path, "rb") as f:
            page_one = f.read(_PAGE_ONE_BYTES)
        page_one = _page_one_in_wal(Path(f"{path}-wal")) or page_one
    except OSError:
        return IndexFile.OTHER  # unreadable: we cannot tell, so it is not ours to replace
    if not page_one:
        return IndexFile.EMPTY
    if not page_one.startswith(SQLITE_MAGIC) or len(page_one) < _PAGE_ONE_BYTES:
        return IndexFile.OTHER
    app_id = int.from_bytes(page_one[68:72], "big")
    if app_id == APPLICATION_ID:
        return IndexFile.OURS
    # Page one is sqlite_master's root: a leaf (0x0D) with no cells means no tables yet.
    blank = app_id == 0 and page_one[100] == 0x0D and int.from_bytes(page_one[103:105], "big") == 0
    return IndexFile.EMPTY if blank else IndexFile.OTHER


def _page_one_in_wal(wal: Path) -> bytes | None:
    """The start of the newest committed copy of page one in a WAL file, or None.

    Read as bytes, never through SQLite: a connection, even read-only, would write the shared-memory file
    of another application's database. Frames count while their salts match the WAL header's."""
    if not wal.is_file():
        return None
    with open(wal, "rb") as f:
        header = f.read(32)
        if len(header) < 32 or int.from_bytes(header[:4], "big") not in _WAL_MAGICS:
            return None
        page_size = int.from_bytes(header[8:12], "big")
        if page_size not in _PAGE_SIZES:
            return None
        salts = header[16:24]
        found = pending = None
        offset = 32
        while True:
            f.seek(offset)
            frame = f.read(24)
            if len(frame) < 24 or frame[8:16] != salts:
                return found
            if int.from_bytes(frame[:4], "big") == 1:
                pending = f.read(_PAGE_ONE_BYTES)
            if int.from_bytes(frame[4:8], "big") and pending is not None:  # a commit frame
                found, pending = pending, None
            offset += 24 + page_size


def not_ours(path: Path, kind: IndexFile) -> MacllmError:
    """The one-line refusal for a path that is not a macllm index: it points elsewhere, never at --rebuild."""
    what = "is a folder" if kind is IndexFile.FOLDER else "is not a macllm notes index"
    return MacllmError(f"{path} {what}; macllm leaves it alone: give --index a new file name (or a name, "
                       f"for $MACLLM_HOME/indexes/NAME.sqlite)")


def check_replaceable(path: Path) -> None:
    """For --rebuild: raises unless `path` is absent, empty or a macllm index (damaged or not)."""
    kind = classify(path)
    if kind not in (IndexFile.ABSENT, IndexFile.EMPTY, IndexFile.OURS):
        raise not_ours(path, kind)
