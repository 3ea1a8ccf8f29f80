"""Index folders of notes incrementally: skip what is unchanged, embed only new chunks, drop deleted files.

Bad files (unreadable, huge, binary) are skipped with a warning and counted; they never stop the run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from macllm.errors import MacllmError
from macllm.rag.chunking import chunk_file
from macllm.rag.store import Store

NOTE_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd", ".txt", ".text", ".rst", ".org"}
MAX_FILE_BYTES = 5 << 20  # bigger than any note; likely a log or a dump


@dataclass
class IndexSummary:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> files
    warnings: list[str] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_reused: int = 0
    truncated: int = 0
    embedder_changed: bool = False
    total_files: int = 0
    total_chunks: int = 0
    seconds: float = 0.0

    def warn(self, path: str, reason: str, skipped: bool = True) -> None:
        self.warnings.append(f"{path}: {reason}")
        if skipped:
            self.skipped[reason.split(" (")[0]] += 1


def find_notes(roots: list[Path], summary: IndexSummary) -> list[Path]:
    """Note files under the roots (a root may be one file), hidden folders left out, symlink loops cut."""
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            found.append(root)
            continue
        visited: set[tuple[int, int]] = set()

        def unreadable(error: OSError):
            summary.warn(error.filename or str(error), f"unreadable ({error.strerror or error})")

        for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
            try:
                st = os.stat(folder)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in visited:  # reached again through a symlink: a loop or a duplicate
                summary.warn(folder, "symlink loop (folder already indexed)")
                dirs[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in NOTE_SUFFIXES:
                    found.append(Path(folder) / name)
    return found


def index_notes(store: Store, embedder, roots: list[str | Path], progress: bool = False,
                on_file: Callable[[int, int, str], None] | None = None) -> IndexSummary:
    """Bring the index up to date with the roots. `on_file(done, total, path)` reports progress (the app's bar)."""
    started = time.perf_counter()
    summary = IndexSummary()
    paths = [Path(os.path.abspath(os.path.expanduser(str(r)))) for r in roots]
    for root in paths:
        if not root.exists():
            raise MacllmError(f"no such folder: {root}")
    summary.embedder_changed = store.use_embedder(embedder.id, embedder.dim, embedder.source)
    truncated_before = embedder.truncated
    notes = find_notes(paths, summary)
    seen = {str(p) for p in notes}

    bar = tqdm(notes, desc="Indexing", unit="file", file=sys.stderr, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for done, path in enumerate(bar, start=1):
        _index_file(store, embedder, path, summary)
        if on_file is not None:
            on_file(done, len(notes), str(path))
    for root in paths:
        if root.is_dir():
            for stale in store.paths_under(str(root)):
                if stale not in seen:
                    store.remove_file(stale)
                    summary.removed += 1
    summary.truncated = embedder.truncated - truncated_before
    summary.total_files, summary.total_chunks = store.counts()
    summary.seconds = time.perf_counter() - started
    return summary


def _index_file(store: Store, embedder, path: Path, summary: IndexSummary) -> None:
    name = str(path)
    try:
        st = path.stat()
    except OSError as e:
        summary.warn(name, f"unreadable ({e.strerror or e})")
        return
    if st.st_size > MAX_FILE_BYTES:
        summary.warn(name, f"too large ({st.st_size / (1 << 20):.1f} MB, limit {MAX_FILE_BYTES >> 20} MB)")
        return
    state = store.file_state(name)
    if state and state[0] == st.st_mtime_ns and state[1] == st.st_size and state[2]:
        summary.unchanged += 1
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        summary.warn(name, f"unreadable ({e.strerror or e})")
        return
    digest = hashlib.sha256(data).hexdigest()
    if state and state[2] == digest:  # touched, not changed
        store.touch_file(name, st.st_mtime_ns, st.st_size)
        summary.unchanged += 1
        return
    if b"\0" in data[:8192]:
        summary.warn(name, "binary (not a text file)")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        summary.warn(name, "not UTF-8 (indexed with undecodable bytes replaced)", skipped=False)
    chunks = chunk_file(name, text.removeprefix("\ufeff"), embedder.count_tokens, embedder.content_limit)
    known = store.known_embeddings([c.hash for c in chunks], embedder.id)
    todo = [c for c in chunks if c.hash not in known]
    if todo:
        vectors = embedder.embed([c.embed_text for c in todo])
        known.update({c.hash: np.ascontiguousarray(v, dtype=np.float32).tobytes()
                      for c, v in zip(todo, vectors, strict=True)})
    summary.chunks_embedded += len(todo)
    summary.chunks_reused += len(chunks) - len(todo)
    store.replace_file(name, st.st_mtime_ns, st.st_size, digest, chunks, [known[c.hash] for c in chunks], embedder.id)
    if state:
        summary.changed += 1
    else:
        summary.added += 1
