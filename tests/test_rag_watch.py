"""A folder that stays indexed: watch batches (a 1,000-file burst is one pass), kill -9 mid-batch, --status."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from macllm.rag.chunking import chunk_file
from macllm.rag.indexer import index_notes
from macllm.rag.status import file_statuses
from macllm.rag.store import Store
from macllm.rag.watch import watch_notes
from tests.conftest import SLOW_INDEX_WRITES
from tests.test_rag_store import consistent

REPO = Path(__file__).resolve().parents[1]


def note(i: int) -> str:
    return f"# Note {i}\n\nparagraph about python {i}\n\n## Part\n\nsqlite text {i}\n"


def exactly_the_notes(store: Store, folder: Path, embedder) -> None:
    """Every note under `folder` is indexed with exactly its chunks, nothing else is, and nothing twice."""
    notes = {str(p): p for p in folder.rglob("*.md")}
    counts = store.chunk_counts()
    assert set(counts) == set(notes)
    for path, p in notes.items():
        expected = chunk_file(path, p.read_text(), embedder.count_tokens, embedder.content_limit)
        assert counts[path] == len(expected), path
    rows = store.conn.execute("SELECT f.path, c.line_start, c.hash FROM chunks c JOIN files f ON f.id = c.file_id")
    keys = [tuple(r) for r in rows]
    assert len(keys) == len(set(keys))


def test_a_burst_of_1000_changes_is_one_pass_and_later_edits_follow(tmp_path, embedder):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "old.md").write_text(note(-1))
    (folder / "gone.md").write_text(note(-2))
    store = Store(tmp_path / "i.sqlite")
    index_notes(store, embedder, [folder])
    batches: list[tuple[int, object]] = []
    ready, stop = threading.Event(), threading.Event()
    watcher = threading.Thread(target=watch_notes, daemon=True,
                               args=(store, embedder, [folder], lambda n, s: batches.append((n, s))),
                               kwargs={"stop": stop, "ready": ready.set})
    watcher.start()
    assert ready.wait(30)
    texts = [note(i) for i in range(1000)]
    (folder / "sub").mkdir()
    for i, text in enumerate(texts):  # like a git checkout: 1,000 files within a fraction of a second
        (folder / ("sub" if i % 2 else "") / f"n{i:04}.md").write_text(text)
    (folder / "gone.md").unlink()
    deadline = time.time() + 120
    while time.time() < deadline and not batches:
        time.sleep(0.1)
    time.sleep(3)  # a second batch from the burst would have come by now
    assert len(batches) == 1, [n for n, _ in batches]
    changes, summary = batches[0]
    # The watcher may miss events of files written into a new folder before it watches that folder (here
    # some of sub/): the pass does not depend on them, it walks the folders.
    assert changes > 500 and summary.added == 1000 and summary.removed == 1
    (folder / "old.md").write_text(note(-1) + "\n## Later\n\nan edit\n")
    (folder / "sub" / "n0001.md").rename(folder / "renamed.md")
    while time.time() < deadline and len(batches) < 2:
        time.sleep(0.1)
    stop.set()
    watcher.join(30)
    assert len(batches) == 2
    later = batches[1][1]
    assert later.changed == 1 and later.added == 1 and later.removed == 1 and later.chunks_embedded == 1
    exactly_the_notes(store, folder, embedder)
    consistent(store.path)


WATCH_SCRIPT = SLOW_INDEX_WRITES + """
from macllm.rag.watch import watch_notes
watch_notes(store_module.Store(sys.argv[1]), Embedder(sys.argv[2]), [sys.argv[3]], lambda n, s: None,
            ready=lambda: print("ready", flush=True))
"""


def test_watcher_killed_mid_batch_leaves_a_store_the_next_run_completes(tmp_path, bert_folder, embedder):
    folder = tmp_path / "notes"
    folder.mkdir()
    db = tmp_path / "i.sqlite"
    Store(db).close()
    proc = subprocess.Popen([sys.executable, "-c", WATCH_SCRIPT, str(db), str(bert_folder), str(folder)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for i in range(300):
            (folder / f"n{i:03}.md").write_text(note(i))
        deadline = time.time() + 90
        done = 0
        while time.time() < deadline and done < 20:
            time.sleep(0.05)
            try:
                conn = sqlite3.connect(db, timeout=0.1)
                done = conn.execute("SELECT count(*) FROM files").fetchone()[0]
                conn.close()
            except sqlite3.Error:
                continue
        assert proc.poll() is None and 20 <= done < 300, done
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    consistent(db)
    store = Store(db)
    partial = len(store.chunk_counts())
    assert all(n == 2 for n in store.chunk_counts().values())  # every recorded file has all its chunks
    summary = index_notes(store, embedder, [folder])
    assert summary.added == 300 - partial and summary.unchanged == partial
    exactly_the_notes(store, folder, embedder)
    consistent(db)


def test_status_says_indexed_changed_new_deleted_skipped_and_failed(tmp_path, embedder):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("kept", "edited", "deleted"):
        (folder / f"{name}.md").write_text(note(1) + name)
    (folder / "binary.md").write_bytes(b"\0\1\2")
    (folder / "huge.md").write_text("x")
    store = Store(tmp_path / "i.sqlite")
    from macllm.rag import indexer

    real_max = indexer.MAX_FILE_BYTES
    indexer.MAX_FILE_BYTES = 0  # every file is "too large" for this one run...
    try:
        index_notes(store, embedder, [folder / "huge.md"])
    finally:
        indexer.MAX_FILE_BYTES = real_max
    index_notes(store, embedder, [folder])  # ...this run over the folder replaces that problem
    (folder / "edited.md").write_text(note(2))
    (folder / "deleted.md").unlink()
    (folder / "new.md").write_text(note(3))
    states = {Path(s.path).name: (s.state, s.detail) for s in file_statuses(store, [folder])}
    assert states["kept.md"] == ("indexed", "2 chunks")
    assert states["edited.md"][0] == "changed"
    assert states["deleted.md"][0] == "deleted"
    assert states["new.md"] == ("new", "not indexed yet")
    assert states["binary.md"] == ("skipped", "binary (not a text file)")
    assert states["huge.md"] == ("indexed", "1 chunk")
    (folder / "dangling.md").symlink_to(folder / "nowhere.md")  # listed by the walk, unreadable
    index_notes(store, embedder, [folder])
    states = {Path(s.path).name: (s.state, s.detail) for s in file_statuses(store)}
    assert states["dangling.md"][0] == "failed" and states["dangling.md"][1].startswith("unreadable")
    assert states["binary.md"][0] == "skipped" and states["edited.md"] == ("indexed", "2 chunks")
