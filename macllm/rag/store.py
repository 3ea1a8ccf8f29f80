"""One notes index = one SQLite file (WAL): files, chunks with embeddings, and an FTS5 table kept in step.

Every write is one transaction (one file's chunks at a time), so a killed indexer leaves a consistent
store. FTS5 rows share the chunk's id and are written in the same transaction as the chunk.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from macllm.errors import MacllmError
from macllm.paths import create_private_file, macllm_home, private_folder
from macllm.rag.cjk import cjk_terms, fts_query, query_words
from macllm.rag.index_file import APPLICATION_ID, IndexFile, check_replaceable, classify, not_ours

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL  -- '' = must be read again (e.g. the embedder changed)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    heading TEXT NOT NULL, line_start INTEGER NOT NULL, line_end INTEGER NOT NULL, hash TEXT NOT NULL,
    text TEXT NOT NULL, embedding BLOB NOT NULL, embedder TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(hash, embedder);
-- cjk: CJK runs as overlapping character pairs, so a phrase inside a sentence is findable by BM25
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(heading, text, cjk, tokenize='porter unicode61');
"""

# Added after format 1 shipped, created when missing (older macllm versions simply ignore it): why a
# file is not indexed, or was indexed with a warning, as of the last run over its folder.
_PROBLEMS = ("CREATE TABLE IF NOT EXISTS problems (path TEXT PRIMARY KEY, kind TEXT NOT NULL, "
             "reason TEXT NOT NULL)")

# Keyword weights: a heading match says more than one in the body.
_BM25_WEIGHTS = (2.0, 1.0, 1.0)
# In a large index, a query word found in over 5% of chunks adds little to BM25 but costs the most time
# (FTS5 scores every chunk that has any query word), so it is left out of the keyword query.
LARGE_INDEX_CHUNKS = 20_000
COMMON_WORD_SHARE = 0.05


@dataclass(frozen=True)
class StoredChunk:
    id: int
    path: str
    heading: str
    line_start: int
    line_end: int
    text: str


def damaged(path: Path, error: Exception) -> MacllmError:
    """SQLite failed on `path`: rebuilding is the advice only for an index of ours, never for someone else's file."""
    kind = classify(path)
    if kind not in (IndexFile.OURS, IndexFile.EMPTY):
        return not_ours(path, kind)
    return MacllmError(f"{path} is a damaged macllm notes index ({error}); "
                       f"rebuild it with `macllm index DIR --index {path} --rebuild`")


class Store:
    def __init__(self, path: Path | str, create: bool = True):
        self.path = Path(path)
        kind = classify(self.path)
        if kind is IndexFile.ABSENT and not create:
            raise MacllmError(f"no notes index at {self.path}; create it with `macllm index DIR`")
        if kind in (IndexFile.FOLDER, IndexFile.OTHER):  # never opened for writing: SQLite could change it
            raise not_ours(self.path, kind)
        if kind is IndexFile.ABSENT:
            private_folder(self.path.parent)
            create_private_file(self.path)  # SQLite gives the WAL and shared-memory files the same mode
        try:
            # Autocommit: we open transactions ourselves; any thread may use it (one at a time).
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._prepare()
        except sqlite3.DatabaseError as e:
            raise damaged(self.path, e) from None

    def _prepare(self) -> None:
        c = self.conn
        app_id = c.execute("PRAGMA application_id").fetchone()[0]
        tables = c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (tables or app_id):
            raise sqlite3.DatabaseError("it belongs to another application")
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")  # with WAL: consistent after a crash, maybe minus the last commit
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA busy_timeout=5000")
        if app_id != APPLICATION_ID:
            with self.transaction():  # statement by statement: executescript would commit early
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    c.execute(statement)
                c.execute(f"PRAGMA application_id={APPLICATION_ID}")
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"index format {version}, this macllm reads {SCHEMA_VERSION}")
        c.execute(_PROBLEMS)

    def close(self) -> None:
        self.conn.close()

    def transaction(self):
        return _Transaction(self.conn)

    # ------------------------------------------------------------------ metadata
    @overload
    def meta(self, key: str, default: str) -> str: ...

    @overload
    def meta(self, key: str, default: None = None) -> str | None: ...

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    @property
    def generation(self) -> int:
        """Bumped by every write, so cached embedding matrices know when to reload."""
        return int(self.meta("generation", "0"))

    def _bump(self) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES ('generation', '1') "
                          "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")

    @property
    def embedder_id(self) -> str | None:
        return self.meta("embedder")

    def use_embedder(self, embedder_id: str, dim: int, source: str = "") -> bool:
        """Record the embedder; a different one than before marks every file for re-reading. True if changed."""
        previous = self.embedder_id
        if previous == embedder_id:
            return False
        with self.transaction():
            self._set_meta("embedder", embedder_id)
            self._set_meta("embedder_source", source)
            self._set_meta("dim", dim)
            if previous is not None:
                self.conn.execute("UPDATE files SET sha256=''")
            self._bump()
        return previous is not None

    # ------------------------------------------------------------------ files
    def file_states(self) -> dict[str, tuple[int, int, str]]:
        """Every file's (mtime_ns, size, sha256) as last indexed, in one query."""
        return {path: (mtime, size, sha) for path, mtime, size, sha in
                self.conn.execute("SELECT path, mtime_ns, size, sha256 FROM files")}

    def touch_file(self, path: str, mtime_ns: int, size: int) -> None:
        with self.transaction():
            self.conn.execute("UPDATE files SET mtime_ns=?, size=? WHERE path=?", (mtime_ns, size, path))

    def known_embeddings(self, hashes: list[str], embedder_id: str) -> dict[str, bytes]:
        """Embeddings already computed for these chunk hashes by this embedder (in any file)."""
        found: dict[str, bytes] = {}
        for start in range(0, len(hashes), 500):
            part = hashes[start:start + 500]
            marks = ",".join("?" * len(part))
            for h, blob in self.conn.execute(
                    f"SELECT hash, embedding FROM chunks WHERE embedder=? AND hash IN ({marks})", (embedder_id, *part)):
                found[h] = blob
        return found

    def replace_file(self, path: str, mtime_ns: int, size: int, sha256: str, chunks, embeddings: list[bytes],
                     embedder_id: str) -> None:
        """The file's chunks, all at once: old rows out, new rows in, in one transaction."""
        c = self.conn
        with self.transaction():
            row = c.execute("SELECT id FROM files WHERE path=?", (path,)).fetchone()
            if row:
                file_id = row[0]
                self._delete_chunks(file_id)
                c.execute("UPDATE files SET mtime_ns=?, size=?, sha256=? WHERE id=?", (mtime_ns, size, sha256, file_id))
            else:
                file_id = c.execute("INSERT INTO files(path, mtime_ns, size, sha256) VALUES (?, ?, ?, ?)",
                                    (path, mtime_ns, size, sha256)).lastrowid
            for chunk, blob in zip(chunks, embeddings, strict=True):
                chunk_id = c.execute(
                    "INSERT INTO chunks(file_id, heading, line_start, line_end, hash, text, embedding, embedder) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (file_id, chunk.heading, chunk.line_start, chunk.line_end, chunk.hash, chunk.text, blob,
                     embedder_id)).lastrowid
                c.execute("INSERT INTO chunks_fts(rowid, heading, text, cjk) VALUES (?, ?, ?, ?)",
                          (chunk_id, chunk.heading, chunk.text, cjk_terms(f"{chunk.heading}\n{chunk.text}")))
            self._bump()

    def remove_file(self, path: str) -> None:
        with self.transaction():
            row = self.conn.execute("SELECT id FROM files WHERE path=?", (path,)).fetchone()
            if row:
                self._delete_chunks(row[0])
                self.conn.execute("DELETE FROM files WHERE id=?", (row[0],))
                self._bump()

    def _delete_chunks(self, file_id: int) -> None:
        self.conn.execute("DELETE FROM chunks_fts WHERE rowid IN (SELECT id FROM chunks WHERE file_id=?)", (file_id,))
        self.conn.execute("DELETE FROM chunks WHERE file_id=?", (file_id,))

    def record_problems(self, roots: list[str], problems: list[tuple[str, str, str]]) -> None:
        """The last run's problems replace those recorded before under the same roots."""
        with self.transaction():
            for root in roots:
                prefix = root.rstrip("/") + "/"
                self.conn.execute("DELETE FROM problems WHERE path = ? OR substr(path, 1, ?) = ?",
                                  (root, len(prefix), prefix))
            self.conn.executemany("INSERT OR REPLACE INTO problems(path, kind, reason) VALUES (?, ?, ?)", problems)

    def problems(self) -> dict[str, tuple[str, str]]:
        """path -> (kind, reason) as of the last run over its folder."""
        return {path: (kind, reason) for path, kind, reason in
                self.conn.execute("SELECT path, kind, reason FROM problems")}

    def chunk_counts(self) -> dict[str, int]:
        """path -> number of chunks, for every indexed file."""
        return dict(self.conn.execute(
            "SELECT f.path, count(c.id) FROM files f LEFT JOIN chunks c ON c.file_id = f.id GROUP BY f.id"))

    def paths_under(self, root: str) -> list[str]:
        prefix = root.rstrip("/") + "/"
        return [p for (p,) in self.conn.execute(
            "SELECT path FROM files WHERE substr(path, 1, ?) = ?", (len(prefix), prefix))]

    def counts(self) -> tuple[int, int]:
        """(files, chunks)."""
        files = self.conn.execute("SELECT count(*) FROM files").fetchone()[0]
        chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return files, chunks

    # ------------------------------------------------------------------ reading for search
    def bm25(self, query: str, n: int, path_glob: str | None = None,
             weights: tuple[float, float, float] = _BM25_WEIGHTS) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first; score = -bm25 (higher is better). Empty if the query has no terms.
        `weights`: of the heading, text and CJK columns (scripts/eval_rag.py --sweep tries others)."""
        match = fts_query(query, skip=self._common_words(query))
        if not match:
            return []
        weights_sql = ", ".join(str(float(w)) for w in weights)
        sql = f"SELECT f.rowid, -bm25(chunks_fts, {weights_sql}) AS score FROM chunks_fts f"
        args: list = [match]
        if path_glob:
            sql += " JOIN chunks c ON c.id = f.rowid JOIN files ON files.id = c.file_id WHERE chunks_fts MATCH ? " \
                   "AND files.path GLOB ?"
            args.append(path_glob)
        else:
            sql += " WHERE chunks_fts MATCH ?"
        sql += " ORDER BY score DESC LIMIT ?"
        return [(int(i), float(s)) for i, s in self.conn.execute(sql, (*args, n))]

    def _common_words(self, query: str) -> frozenset[str]:
        """Lower-cased query words that occur in more than COMMON_WORD_SHARE of a large index's chunks."""
        chunks = self._chunk_count()
        words = {w.lower() for w in query_words(query)}
        if chunks < LARGE_INDEX_CHUNKS or not words:
            return frozenset()
        c = self.conn
        # The index holds porter stems: tokenize the words with the same tokenizer in a scratch table.
        c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_terms USING fts5(word, tokenize='porter unicode61')")
        c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.query_vocab USING fts5vocab(temp, query_terms, 'row')")
        c.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunk_vocab USING fts5vocab(main, chunks_fts, 'row')")
        common: dict[str, int] = {}
        for word in words:
            c.execute("INSERT INTO temp.query_terms(rowid, word) VALUES (1, ?)", (word,))
            stems = [t for (t,) in c.execute("SELECT term FROM temp.query_vocab")]
            c.execute("DELETE FROM temp.query_terms")
            docs = [c.execute("SELECT doc FROM temp.chunk_vocab WHERE term=?", (t,)).fetchone() for t in stems]
            if stems and all(d and d[0] > COMMON_WORD_SHARE * chunks for d in docs):
                common[word] = min(d[0] for d in docs)
        if len(common) == len(words):  # every word is common: keep the rarest one
            del common[min(common, key=common.__getitem__)]
        return frozenset(common)

    def _chunk_count(self) -> int:
        generation = self.generation
        if getattr(self, "_counted", (None, 0))[0] != generation:
            self._counted = (generation, self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
        return self._counted[1]

    def embedding_matrix(self, embedder_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(chunk ids, (n, dim) float32 matrix, file path per row) for chunks embedded by `embedder_id`."""
        rows = self.conn.execute(
            "SELECT c.id, c.embedding, f.path FROM chunks c JOIN files f ON f.id = c.file_id WHERE c.embedder=? "
            "ORDER BY c.id", (embedder_id,)).fetchall()
        dim = int(self.meta("dim", "0") or 0)
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32), []
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, matrix, [r[2] for r in rows]

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        found: dict[int, StoredChunk] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(
                    "SELECT c.id, f.path, c.heading, c.line_start, c.line_end, c.text FROM chunks c "
                    f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({marks})", part):
                found[row[0]] = StoredChunk(*row)
        return found


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (including KeyboardInterrupt)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, error, tb):
        if kind is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
        return False


def index_path(arg: str | None) -> Path:
    """--index: a path, or a bare name for $MACLLM_HOME/indexes/NAME.sqlite; default `notes`."""
    name = arg or "notes"
    if "/" not in name and "." not in name:
        return macllm_home() / "indexes" / f"{name}.sqlite"  # Store creates the folder (0700)
    return Path(name).expanduser()


def delete_index(path: Path) -> None:
    """For --rebuild: the file and its WAL companions, only if it is a macllm index (or blank); else one line."""
    check_replaceable(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
