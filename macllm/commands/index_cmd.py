"""`macllm index DIR...`: add folders of notes to a search index, incrementally."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from macllm.errors import MacllmError


def add_parser(sub) -> None:
    p = sub.add_parser("index", help="index folders of Markdown/text notes for `macllm search` and `macllm ask`")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders (or single files) of notes")
    add_index_option(p)
    p.add_argument("--rebuild", action="store_true", help="start the index from scratch")
    p.add_argument("--embedder", default=None,
                   help="minilm-l6 (default, or the index's own), embeddinggemma-300m (multilingual), or a "
                        "sentence-transformers BERT/EmbeddingGemma folder or HF repo id")
    p.add_argument("--verbose", "-v", action="store_true", help="list every skipped file and warning")
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
    if args.rebuild:
        delete_index(path)
    store = Store(path)
    embedder = Embedder.load(args.embedder or store.meta("embedder_source") or None, progress=True)
    try:
        summary = index_notes(store, embedder, args.dirs, progress=True)
    except sqlite3.DatabaseError as e:
        raise damaged(path, e) from None
    print_summary(summary, path, args.verbose)
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
