"""The notes index: incremental indexing, embedder changes, bad files, damaged stores, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from macllm.errors import MacllmError
from macllm.rag.indexer import index_notes
from macllm.rag.store import Store
from tests.conftest import SLOW_INDEX_WRITES
from tests.tiny_bert import write_tiny_bert

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def notes(tmp_path) -> Path:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# Alpha\n\nThe cat sat on the mat.\n\n## Beta\n\nSQLite notes here.\n")
    (root / "sub" / "b.txt").write_text("First paragraph about python.\n\nSecond paragraph about dogs.\n")
    (root / "sub" / "ignored.bin").write_bytes(b"\0\1\2")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.md").write_text("# hidden\n")
    return root


def consistent(path: Path) -> None:
    """integrity_check ok, FTS rows exactly the chunks, FTS internally consistent, no orphan chunks."""
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    chunk_ids = {r[0] for r in conn.execute("SELECT id FROM chunks")}
    fts_ids = {r[0] for r in conn.execute("SELECT rowid FROM chunks_fts")}
    assert chunk_ids == fts_ids
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
    assert conn.execute("SELECT count(*) FROM chunks WHERE file_id NOT IN (SELECT id FROM files)").fetchone()[0] == 0
    conn.close()


def test_first_index_then_nothing_to_do(tmp_path, notes, embedder):
    store = Store(tmp_path / "i.sqlite")
    first = index_notes(store, embedder, [notes])
    assert (first.added, first.changed, first.removed, first.unchanged) == (2, 0, 0, 0)
    assert first.total_files == 2 and first.total_chunks >= 3 and first.chunks_embedded == first.total_chunks
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = index_notes(store, embedder, [notes])
    assert (again.added, again.changed, again.unchanged, again.chunks_embedded) == (0, 0, 2, 0)
    consistent(store.path)


def test_touched_file_is_not_reembedded_and_edit_embeds_only_new_chunks(tmp_path, notes, embedder):
    store = Store(tmp_path / "i.sqlite")
    index_notes(store, embedder, [notes])
    note = notes / "a.md"
    os.utime(note, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime
    touched = index_notes(store, embedder, [notes])
    assert touched.unchanged == 2 and touched.chunks_embedded == 0
    note.write_text(note.read_text() + "\n## Gamma\n\nA brand new section.\n")
    edited = index_notes(store, embedder, [notes])
    assert edited.changed == 1 and edited.chunks_embedded == 1 and edited.chunks_reused == 2
    consistent(store.path)


def test_deleted_file_is_removed_and_other_roots_kept(tmp_path, notes, embedder):
    other = tmp_path / "other"
    other.mkdir()
    (other / "c.md").write_text("# C\n\ncode\n")
    store = Store(tmp_path / "i.sqlite")
    index_notes(store, embedder, [notes, other])
    (notes / "sub" / "b.txt").unlink()
    summary = index_notes(store, embedder, [notes])
    assert summary.removed == 1 and summary.total_files == 2  # a.md and other/c.md
    assert store.bm25("python", 10) == []
    consistent(store.path)


def test_different_embedder_reembeds_everything(tmp_path, notes, embedder):
    from macllm.rag.embedder import Embedder

    store = Store(tmp_path / "i.sqlite")
    first = index_notes(store, embedder, [notes])
    other = Embedder(write_tiny_bert(tmp_path / "other-bert", seed=7))
    summary = index_notes(store, other, [notes])
    assert summary.embedder_changed and summary.changed == 2 and summary.chunks_embedded == first.total_chunks
    ids, matrix, _ = store.embedding_matrix(other.id)
    assert len(ids) == first.total_chunks and len(store.embedding_matrix(embedder.id)[0]) == 0


def test_bad_files_are_skipped_with_warnings(tmp_path, notes, embedder, monkeypatch):
    from macllm.rag import indexer

    (notes / "latin1.txt").write_bytes("caf\xe9 notes".encode("latin-1"))
    (notes / "huge.md").write_text("x" * 200)
    (notes / "binary.md").write_bytes(b"abc\0def")
    (notes / "loop").symlink_to(notes, target_is_directory=True)
    locked = notes / "locked.md"
    locked.write_text("# locked\n")
    monkeypatch.setattr(indexer, "MAX_FILE_BYTES", 100)
    real_read = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.md":  # works as root too, where chmod 000 would not
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    store = Store(tmp_path / "i.sqlite")
    summary = index_notes(store, embedder, [notes])
    assert summary.added == 3  # a.md, b.txt, latin1.txt (decoded with replacement)
    assert summary.skipped == {"too large": 1, "binary": 1, "unreadable": 1, "symlink loop": 1}
    assert any("latin1.txt: not UTF-8" in w for w in summary.warnings)
    assert store.bm25("caf", 5)  # the readable part is searchable


def test_damaged_or_foreign_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(MacllmError, match="not a macllm notes index") as err:
        Store(junk)
    assert "--rebuild" not in str(err.value)  # not ours: rebuilding would delete someone's file
    assert junk.read_bytes() == b"this is not a database at all" * 100
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(MacllmError, match="not a macllm notes index"):
        Store(foreign)
    with pytest.raises(MacllmError, match="no notes index"):
        Store(tmp_path / "missing.sqlite", create=False)


KILL_SCRIPT = SLOW_INDEX_WRITES + """
from macllm.rag.indexer import index_notes
index_notes(store_module.Store(sys.argv[1]), Embedder(sys.argv[2]), [sys.argv[3]])
"""


def test_killed_indexer_leaves_a_consistent_store_that_the_next_run_completes(tmp_path, bert_folder, embedder):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(60):
        (root / f"n{i:02}.md").write_text(f"# Note {i}\n\nparagraph one of note {i}\n\n## Part\n\nmore text {i}\n")
    db = tmp_path / "i.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(db), str(bert_folder), str(root)], cwd=REPO)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            conn = sqlite3.connect(db, timeout=0.1)
            done = conn.execute("SELECT count(*) FROM files").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            continue
        if done >= 10:
            break
    assert proc.poll() is None, "the indexer finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    consistent(db)
    store = Store(db)
    partial = store.counts()[0]
    assert 10 <= partial < 60
    # every file that is recorded has all its chunks
    per_file = dict(store.conn.execute("SELECT f.path, count(c.id) FROM files f LEFT JOIN chunks c ON c.file_id=f.id "
                                       "GROUP BY f.id"))
    assert all(n == 2 for n in per_file.values())
    summary = index_notes(store, embedder, [root])
    assert summary.added == 60 - partial and summary.unchanged == partial
    assert store.counts() == (60, 120)
    consistent(db)


def test_files_embedded_together_equal_each_alone_and_progress_counts_bytes(tmp_path, embedder, monkeypatch):
    """Chunks of many files share embedding calls (PENDING_CHUNKS); each file is still written whole, a chunk
    repeated across files is embedded once, and the progress callback ends at the notes' total size."""
    from macllm.rag import indexer

    monkeypatch.setattr(indexer, "PENDING_CHUNKS", 5)
    root = tmp_path / "many"
    root.mkdir()
    for i in range(23):
        (root / f"n{i:02}.md").write_text(f"# Note {i}\n\nparagraph one of note {i}\n\n## Shared\n\nthe same text\n")
    calls = []
    store = Store(tmp_path / "i.sqlite")
    summary = index_notes(store, embedder, [root], on_file=lambda done, total, path: calls.append((done, total)))
    assert summary.added == 23 and store.counts() == (23, 46)
    assert summary.chunks_embedded == 46 and summary.chunks_reused == 0  # "Shared" chunks differ by title
    total = sum(p.stat().st_size for p in root.iterdir())
    assert [t for _, t in calls] == [total] * 23 and calls[-1][0] == total
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    for text, heading, blob in store.conn.execute("SELECT text, heading, embedding FROM chunks"):
        alone = embedder.embed([f"{heading}\n\n{text}"])[0]
        np.testing.assert_allclose(np.frombuffer(blob, dtype=np.float32), alone, atol=1e-5)
    (root / "copy.md").write_text((root / "n00.md").read_text())
    (root / "copy2.md").write_text((root / "n00.md").read_text())
    again = index_notes(store, embedder, [root])
    assert again.added == 2 and again.chunks_embedded == 0 and again.chunks_reused == 4
