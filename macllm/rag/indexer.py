"""Index folders of notes incrementally: skip what is unchanged, embed only new chunks, drop deleted files.

Bad files (unreadable, huge, binary) are skipped with a warning and counted; they never stop the run.
A reader thread reads, hashes and chunks files ahead of the embedder; chunks of many files are embedded
together (big batches), then each file is written in its own transaction (a killed run loses at most the
files whose vectors were not yet written, and the next run redoes just those).
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from macllm.errors import MacllmError
from macllm.rag.chunking import Chunk, chunk_file, chunk_pages
from macllm.rag.pdf import UnreadablePdf, pdf_pages
from macllm.rag.store import Store

NOTE_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd", ".txt", ".text", ".rst", ".org", ".pdf"}
MAX_FILE_BYTES = 5 << 20  # bigger than any note; likely a log or a dump
MAX_PDF_BYTES = 100 << 20  # PDFs carry fonts and images: the text is a small part


@dataclass
class IndexSummary:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> files
    warnings: list[str] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, "skipped"/"failed"/"warning", why)
    chunks_embedded: int = 0
    chunks_reused: int = 0
    truncated: int = 0
    embedder_changed: bool = False
    total_files: int = 0
    total_chunks: int = 0
    seconds: float = 0.0

    def warn(self, path: str, reason: str, skipped: bool = True) -> None:
        self.warnings.append(f"{path}: {reason}")
        kind = ("failed" if reason.startswith("unreadable") else "skipped") if skipped else "warning"
        self.problems.append((path, kind, reason))
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


def index_notes(store: Store, embedder, roots: Sequence[str | Path], progress: bool = False,
                on_file: Callable[[int, int, str], None] | None = None) -> IndexSummary:
    """Bring the index up to date with the roots.

    `on_file(done, total, path)` follows each written file, counted in bytes of the notes being (re)read,
    so that a bar's ETA holds for notes of any size (the app's bar; the CLI's is `progress`)."""
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
    todo = _changed_files(store, notes, summary)
    total_bytes = sum(size for _, size in todo)
    bar = tqdm(total=total_bytes, desc=f"Indexing {len(todo)} notes", unit="B", unit_scale=True, file=sys.stderr,
               leave=False, disable=not (progress and sys.stderr.isatty()))
    done_bytes = 0

    def written(path: str, size: int) -> None:
        nonlocal done_bytes
        done_bytes += size
        bar.update(size)
        bar.set_postfix(chunks=summary.chunks_embedded, refresh=False)
        if on_file is not None:
            on_file(done_bytes, total_bytes, path)

    try:
        _EmbedAndWrite(store, embedder, summary, written).run(_read_in_background(todo, embedder))
    finally:
        bar.close()
    for root in paths:
        if root.is_dir():
            for stale in store.paths_under(str(root)):
                if stale not in seen:
                    store.remove_file(stale)
                    summary.removed += 1
    store.record_problems([str(p) for p in paths], summary.problems)
    summary.truncated = embedder.truncated - truncated_before
    summary.total_files, summary.total_chunks = store.counts()
    summary.seconds = time.perf_counter() - started
    return summary


def _changed_files(store: Store, notes: list[Path], summary: IndexSummary) -> list[tuple[_Known, int]]:
    """The notes whose mtime or size differ from the index (or that it has never read), with their sizes."""
    states = store.file_states()
    todo = []
    for path in notes:
        name = str(path)
        try:
            st = path.stat()
        except OSError as e:
            summary.warn(name, f"unreadable ({e.strerror or e})")
            continue
        limit = MAX_PDF_BYTES if path.suffix.lower() == ".pdf" else MAX_FILE_BYTES
        if st.st_size > limit:
            summary.warn(name, f"too large ({st.st_size / (1 << 20):.1f} MB, limit {limit >> 20} MB)")
            continue
        state = states.get(name)
        if state and state[0] == st.st_mtime_ns and state[1] == st.st_size and state[2]:
            summary.unchanged += 1
            continue
        todo.append((_Known(path, st.st_mtime_ns, st.st_size, state[2] if state else None), st.st_size))
    return todo


@dataclass
class _Known:
    path: Path
    mtime_ns: int
    size: int
    sha256: str | None  # as last indexed; None for a new file


@dataclass
class _Read:
    """One file as the reader thread left it: chunks to store, or only a touch, or a warning."""
    file: _Known
    digest: str = ""
    chunks: list[Chunk] | None = None  # None: nothing to write but a touch (same content) or nothing at all
    warning: str | None = None
    skipped: bool = True  # the warning means the file was left out


def _read_in_background(todo: list[tuple[_Known, int]], embedder) -> Iterator[_Read]:
    """Read, hash and chunk the files on a thread of their own, a few files ahead of the embedder."""
    out: queue.Queue = queue.Queue(maxsize=64)
    stop = threading.Event()

    def work() -> None:
        try:
            for known, _ in todo:
                if stop.is_set():
                    return
                out.put(_read(known, embedder))
        except BaseException as e:  # handed to the consumer, who raises it
            out.put(e)
        finally:
            out.put(None)

    thread = threading.Thread(target=work, name="notes-reader", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                out.get(timeout=0.05)
            except queue.Empty:
                pass


def _read(known: _Known, embedder) -> _Read:
    name = str(known.path)
    try:
        data = known.path.read_bytes()
    except OSError as e:
        return _Read(known, warning=f"unreadable ({e.strerror or e})")
    digest = hashlib.sha256(data).hexdigest()
    if known.sha256 == digest:  # touched, not changed
        return _Read(known, digest)
    if known.path.suffix.lower() == ".pdf":
        return _read_pdf(known, data, digest, embedder)
    if b"\0" in data[:8192]:
        return _Read(known, digest, warning="binary (not a text file)")
    warning = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        warning = "not UTF-8 (indexed with undecodable bytes replaced)"
    chunks = chunk_file(name, text.removeprefix("\ufeff"), embedder.count_tokens, embedder.content_limit)
    return _Read(known, digest, chunks, warning, skipped=False)


def _read_pdf(known: _Known, data: bytes, digest: str, embedder) -> _Read:
    try:
        pages = pdf_pages(data)
    except UnreadablePdf as e:
        return _Read(known, digest, warning=f"unreadable PDF ({e})")
    empty = [str(n) for n, text in enumerate(pages, start=1) if not text.strip()]
    if len(empty) == len(pages):
        return _Read(known, digest, warning="scanned PDF (no text on any page)")
    chunks = chunk_pages(pages, embedder.count_tokens, embedder.content_limit)
    warning = f"{len(empty)} scanned page(s) without text skipped: {', '.join(empty)}" if empty else None
    return _Read(known, digest, chunks, warning, skipped=False)


# Files wait until this many new chunks are pending, so that the embedder sees big batches (each file
# still gets its own transaction once its chunks are embedded).
PENDING_CHUNKS = 256


class _EmbedAndWrite:
    """Gathers chunks of several files, embeds them in one call, then writes each file in its own transaction."""

    def __init__(self, store: Store, embedder, summary: IndexSummary, written: Callable[[str, int], None]):
        self.store, self.embedder, self.summary, self.written = store, embedder, summary, written
        self.pending: list[tuple[_Read, dict[str, bytes]]] = []
        self.texts: dict[str, str] = {}  # hash -> text, chunks that still need a vector

    def run(self, files: Iterator[_Read]) -> None:
        for item in files:
            self.add(item)
            if len(self.texts) >= PENDING_CHUNKS:
                self.flush()
        self.flush()

    def add(self, item: _Read) -> None:
        name, summary = str(item.file.path), self.summary
        if item.warning:
            summary.warn(name, item.warning, skipped=item.skipped)
        if item.chunks is None:
            if not item.warning:  # same bytes, new mtime
                self.store.touch_file(name, item.file.mtime_ns, item.file.size)
                summary.unchanged += 1
            self.written(name, item.file.size)
            return
        known = self.store.known_embeddings([c.hash for c in item.chunks], self.embedder.id)
        for chunk in item.chunks:
            if chunk.hash not in known:
                self.texts.setdefault(chunk.hash, chunk.embed_text)
        self.pending.append((item, known))

    def flush(self) -> None:
        fresh: dict[str, bytes] = {}
        if self.texts:
            hashes = list(self.texts)
            vectors = self.embedder.embed([self.texts[h] for h in hashes])
            fresh = {h: np.ascontiguousarray(v, dtype=np.float32).tobytes()
                     for h, v in zip(hashes, vectors, strict=True)}
        counted: set[str] = set()  # a chunk repeated in a later file is embedded once, then reused
        for item, known in self.pending:
            chunks = item.chunks or []
            vectors = [known.get(c.hash) or fresh[c.hash] for c in chunks]
            embedded = {c.hash for c in chunks if c.hash not in known} - counted
            counted |= embedded
            self.summary.chunks_embedded += len(embedded)
            self.summary.chunks_reused += len(chunks) - len(embedded)
            f = item.file
            self.store.replace_file(str(f.path), f.mtime_ns, f.size, item.digest, chunks, vectors, self.embedder.id)
            if f.sha256 is None:
                self.summary.added += 1
            else:
                self.summary.changed += 1
            self.written(str(f.path), f.size)
        self.pending.clear()
        self.texts.clear()
