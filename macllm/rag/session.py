"""Open an existing index with the embedder it was built with, ready to search."""

from __future__ import annotations

import sqlite3

from macllm.errors import MacllmError
from macllm.rag.embedder import Embedder
from macllm.rag.retrieve import Retriever
from macllm.rag.store import Store, damaged, index_path


def open_retriever(index: str | None, progress: bool = True) -> Retriever:
    store = Store(index_path(index), create=False)
    try:
        chunks = store.counts()[1]
    except sqlite3.DatabaseError as e:
        raise damaged(store.path, e) from None
    if chunks == 0:
        raise MacllmError(f"the notes index {store.path} is empty; add notes with `macllm index DIR`")
    source = store.meta("embedder_source") or None
    embedder = Embedder.load(source, progress=progress)
    if embedder.id != store.embedder_id:
        raise MacllmError(f"the embedder {embedder.source} has changed since {store.path} was built; "
                          f"run `macllm index DIR --index {store.path}` again to re-embed")
    return Retriever(store, embedder)
