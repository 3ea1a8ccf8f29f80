"""Per-file index status: indexed (and how many chunks), changed or new since, skipped or failed and why.

Read from the index (files, chunks, the last run's problems) and one stat per file; `macllm index --status`
and the app's notes panel show it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from macllm.rag.store import Store


@dataclass(frozen=True)
class FileStatus:
    path: str
    state: str  # indexed / changed / new / deleted / skipped / failed
    detail: str = ""  # chunk count, or why


def file_statuses(store: Store, roots: Sequence[str | Path] | None = None) -> list[FileStatus]:
    """Every file the index knows, plus the notes under `roots` it has not indexed yet; sorted by path."""
    states = store.file_states()
    counts = store.chunk_counts()
    problems = store.problems()
    out: dict[str, FileStatus] = {}
    for path, (mtime_ns, size, _) in states.items():
        try:
            st = os.stat(path)
        except OSError:
            out[path] = FileStatus(path, "deleted", "gone since it was indexed")
            continue
        n = counts.get(path, 0)
        chunks = f"{n} chunk{'s' if n != 1 else ''}"
        if (st.st_mtime_ns, st.st_size) != (mtime_ns, size):
            out[path] = FileStatus(path, "changed", f"edited since it was indexed; {chunks} indexed")
        else:
            warning = problems.get(path)
            out[path] = FileStatus(path, "indexed", chunks + (f"; {warning[1]}" if warning else ""))
    for path, (kind, reason) in problems.items():
        if path not in out and kind != "warning":
            out[path] = FileStatus(path, kind, reason)
    if roots:
        # Here, not at the top: the app's notes panel shows status without loading the indexer (start-up time).
        from macllm.rag.indexer import IndexSummary, find_notes

        absolute = [Path(os.path.abspath(os.path.expanduser(str(r)))) for r in roots]
        for note in find_notes([r for r in absolute if r.exists()], IndexSummary()):
            out.setdefault(str(note), FileStatus(str(note), "new", "not indexed yet"))
    return [out[p] for p in sorted(out)]


def status_counts(statuses: list[FileStatus]) -> Counter:
    return Counter(s.state for s in statuses)
