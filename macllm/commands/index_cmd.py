"""`macllm index DIR...`: add folders of notes to a search index, incrementally."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from macllm.errors import MacllmError


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="index folders of Markdown/text notes for `macllm search` and `macllm ask`")
    p.add_argument("dirs", nargs="*", metavar="DIR", help="folders (or single files) of notes")
    add_index_option(p)
    p.add_argument("--rebuild", action="store_true", help="start the index from scratch")
    p.add_argument("--embedder", default=None,
                   help="minilm-l6 (default, or the index's own), embeddinggemma-300m (multilingual), or a "
                        "sentence-transformers BERT/EmbeddingGemma folder or HF repo id")
    p.add_argument("--verbose", "-v", action="store_true", help="list every skipped file and warning")
    p.add_argument("--watch", action="store_true",
                   help="after indexing, keep watching the folders and re-index changes as they happen (Ctrl-C stops)")
    p.add_argument("--status", action="store_true",
                   help="list every file: indexed (chunks), changed or new since, skipped or failed and why")
    p.set_defaults(run=run)


def add_index_option(p) -> None:
    p.add_argument("--index", default=None, metavar="PATH",
                   help="the index file, or a name under $MACLLM_HOME/indexes (default: notes)")


def run(args) -> int:
    from macllm.rag.embedder import Embedder
    from macllm.rag.indexer import index_notes
    from macllm.rag.store import Store, damaged, delete_index, index_path

    for folder in args.dirs:  # before any model download
        if not Path(folder).expanduser().exists():
            raise MacllmError(f"no such folder: {folder}")
    path = index_path(args.index)
    if args.status:
        if args.rebuild or args.watch:
            raise MacllmError("--status only reads the index: leave out --rebuild and --watch")
        return print_status(path, args.dirs)
    if not args.dirs:
        raise MacllmError("name the folders to index: `macllm index DIR...` (or `macllm index --status`)")
    if args.rebuild:
        delete_index(path)
    store = Store(path)
    embedder = Embedder.load(args.embedder or store.meta("embedder_source") or None, progress=True)
    try:
        summary = index_notes(store, embedder, args.dirs, progress=True)
        print_summary(summary, path, args.verbose)
        if args.watch:
            watch_folders(store, embedder, args.dirs)
    except sqlite3.DatabaseError as e:
        raise damaged(path, e) from None
    return 0


def watch_folders(store, embedder, dirs: list[str]) -> None:
    from macllm.rag.watch import describe_batch, watch_notes

    print(f"Watching {', '.join(dirs)} for changes (Ctrl-C stops)", flush=True)

    def on_batch(changes: int, summary) -> None:
        print(time.strftime("%H:%M:%S ") + describe_batch(changes, summary), flush=True)

    try:
        watch_notes(store, embedder, dirs, on_batch)
    except KeyboardInterrupt:
        pass


def print_status(path: Path, dirs: list[str]) -> int:
    from macllm.rag.status import file_statuses, status_counts
    from macllm.rag.store import Store, damaged

    store = Store(path, create=False)
    try:
        statuses = file_statuses(store, dirs)
    except sqlite3.DatabaseError as e:
        raise damaged(path, e) from None
    for s in statuses:
        print(f"{s.state:<8} {s.path}" + (f"  ({s.detail})" if s.detail else ""))
    counts = status_counts(statuses)
    print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "the index is empty", f"({path})")
    return 0


def print_summary(s, path, verbose: bool) -> None:
    for warning in s.warnings if verbose else s.warnings[:10]:
        print(f"macllm: warning: {warning}", file=sys.stderr)
    if not verbose and len(s.warnings) > 10:
        print(f"macllm: ... {len(s.warnings) - 10} more warnings (--verbose lists them)", file=sys.stderr)
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(s.skipped.items()))
    print(f"Files: {s.added} added, {s.changed} changed, {s.removed} removed, {s.unchanged} unchanged, "
          f"{sum(s.skipped.values())} skipped" + (f" ({skipped})" if skipped else ""))
    print(f"Chunks: {s.chunks_embedded} embedded, {s.chunks_reused} reused"
          + (f", {s.truncated} truncated to the embedder's limit" if s.truncated else "")
          + (" (embedder changed: re-embedded)" if s.embedder_changed else ""))
    print(f"Index: {s.total_files} files, {s.total_chunks} chunks in {path} ({s.seconds:.1f} s)")
