"""Keep an index in step with its folders: watch them (watchfiles) and re-run the incremental indexer per batch.

Each batch of changes, however many files it names, leads to one `index_notes` pass over the roots, not
to per-event edits: the pass stats every note (milliseconds for thousands), so renames, deleted folders
and events the watcher coalesced or missed all come out right, a burst of 1,000 changes (a git checkout)
is one pass, and the index can neither lose nor duplicate a chunk (each file is still replaced whole in
its own transaction). Changes that arrive during a pass start the next one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from watchfiles import Change, watch

from macllm.rag.indexer import IndexSummary, index_notes
from macllm.rag.store import Store

# watchfiles groups changes until none came for STEP_MS, or for at most DEBOUNCE_MS from the first one: a
# git checkout (or a copy) of thousands of files on a busy machine still lands in one batch.
DEBOUNCE_MS = 30_000
STEP_MS = 1000


def watch_notes(store: Store, embedder, roots: Sequence[str | Path],
                on_batch: Callable[[int, IndexSummary], None], stop: threading.Event | None = None,
                ready: Callable[[], None] | None = None) -> None:
    """Until `stop` is set (or Ctrl-C): after each batch of changes, `on_batch(changes, summary)` of its pass.

    `ready()` is called once the watcher is listening (tests wait for it before changing files)."""
    folders = [str(Path(r).expanduser().resolve()) for r in roots]
    for changes in watch_changes(folders, store.path, stop, ready):
        on_batch(changes, index_notes(store, embedder, folders))


def watch_changes(roots: Sequence[str | Path], index: Path, stop: threading.Event | None = None,
                  ready: Callable[[], None] | None = None) -> Iterator[int]:
    """The number of changed paths in each batch under the roots (the index's own files and hidden paths
    left out), until `stop` is set. The caller runs one pass per batch, on whichever thread owns the work."""
    folders = [str(Path(r).expanduser().resolve()) for r in roots]
    index_files = {str(Path(index).resolve()) + suffix for suffix in ("", "-wal", "-shm", "-journal")}

    def relevant(change: Change, path: str) -> bool:
        """Not the index itself, nothing in a hidden folder or file below a root (the indexer skips those)."""
        if path in index_files:
            return False
        for folder in folders:
            if path.startswith(folder + "/"):
                return not any(part.startswith(".") for part in Path(path[len(folder) + 1:]).parts)
        return True

    announced = False
    # Waking every 200 ms lets `stop` end the loop promptly and `ready` be called once the watch is set up.
    for changes in watch(*folders, watch_filter=relevant, debounce=DEBOUNCE_MS, step=STEP_MS, stop_event=stop,
                         yield_on_timeout=True, rust_timeout=200):
        if not announced and ready is not None:
            announced = True
            ready()
        if changes:
            yield len(changes)


def describe_batch(changes: int, s: IndexSummary) -> str:
    """One line for the CLI's watch log."""
    return f"{changes} change{'s' if changes != 1 else ''}: " + describe_pass(s)


def describe_pass(s: IndexSummary) -> str:
    """What one incremental pass did, and the index after it."""
    parts = [f"{n} {what}" for n, what in ((s.added, "added"), (s.changed, "changed"), (s.removed, "removed"))
             if n]
    skipped = sum(s.skipped.values())
    if skipped:
        parts.append(f"{skipped} skipped (`macllm index --status` says why)")
    return ((", ".join(parts) or "nothing to re-index")
            + f"; {s.chunks_embedded} chunks embedded; index: {s.total_files} files, {s.total_chunks} chunks"
            + f" ({s.seconds:.2f} s)")
