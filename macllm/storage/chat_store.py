"""Saved conversations: one SQLite file of chats and their messages (no UI imports here).

Every write is its own committed transaction, so a crash or kill never loses a finished message.
One connection is shared by the UI thread and worker threads, serialized by a lock.
A new file is private (0600; SQLite gives its -wal and -shm files the same mode). A file macllm cannot
use (damaged, foreign, read-only) is never changed: `ChatStoreError` says what and where, and
`fresh_path` names a new file beside it to continue in.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from macllm.errors import MacllmError
from macllm.paths import create_private_file, macllm_home

SCHEMA_VERSION = 1
# PRAGMA application_id: b"mLLM", so a file of ours is told apart from any other SQLite file.
APPLICATION_ID = 0x6D4C4C4D
DEFAULT_TITLE = "New chat"
FILE_NAME = "chats.sqlite3"
ROLES = ("system", "user", "assistant")

_SCHEMA = (
    """CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        finish_reason TEXT,
        meta TEXT,
        created_at REAL NOT NULL,
        UNIQUE (conversation_id, seq)
    )""",
    "CREATE INDEX conversations_by_update ON conversations(updated_at)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class ChatStoreError(MacllmError):
    """The chat file cannot be opened, read or written; `path` is that file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def default_path() -> Path:
    return macllm_home() / FILE_NAME


def fresh_path(path: Path, now: datetime | None = None) -> Path:
    """A new chat file beside `path` (chats-YYYYmmdd-HHMMSS.sqlite3), for when `path` cannot be used."""
    stamp = f"{path.stem}-{(now or datetime.now()):%Y%m%d-%H%M%S}"
    candidate, n = path.with_name(f"{stamp}{path.suffix}"), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stamp}-{n}{path.suffix}")
    return candidate


@dataclass(frozen=True)
class StoredConversation:
    id: str
    title: str
    created_at: float  # seconds since the epoch
    updated_at: float  # last message write (rename/settings do not reorder the list)
    settings: dict


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: str
    seq: int  # 0, 1, 2 ... within its conversation
    role: str
    content: str
    finish_reason: str | None
    meta: dict
    created_at: float


class ChatStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.RLock()
        self._last_time = 0.0
        self._conn, self.writable = _open(self.path)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "ChatStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- conversations ---------------------------------------------------------------------

    def create_conversation(self, title: str = DEFAULT_TITLE,
                            settings: dict | None = None) -> StoredConversation:
        conv_id = uuid.uuid4().hex[:12]
        with self._write() as db:
            now = self._now()
            db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?)",
                       (conv_id, title, now, now, json.dumps(settings or {})))
        return self.get_conversation(conv_id)

    def add_conversation_with_messages(self, title: str, settings: dict,
                                       messages: list[tuple[str, str, str | None, dict]],
                                       conversation_id: str | None = None) -> StoredConversation:
        """A conversation and its (role, content, finish_reason, meta) messages in one transaction: all or none.
        Carries a chat on screen into a fresh file when the old one cannot be written (keeping its id)."""
        conv_id = conversation_id or uuid.uuid4().hex[:12]
        with self._write() as db:
            now = self._now()
            db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?)",
                       (conv_id, title, now, now, json.dumps(settings)))
            for seq, (role, content, finish_reason, meta) in enumerate(messages):
                db.execute("INSERT INTO messages (conversation_id, seq, role, content, finish_reason, meta, "
                           "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (conv_id, seq, role, content, finish_reason, _dump_meta(meta), now))
        return self.get_conversation(conv_id)

    def list_conversations(self) -> list[StoredConversation]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM conversations ORDER BY updated_at DESC, rowid DESC")
            return [_conversation(row) for row in rows.fetchall()]

    def get_conversation(self, conversation_id: str) -> StoredConversation:
        with self._read() as db:
            row = db.execute("SELECT * FROM conversations WHERE id = ?",
                             (conversation_id,)).fetchone()
        if row is None:
            raise _missing_conversation(conversation_id)
        return _conversation(row)

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        with self._write() as db:
            cur = db.execute("UPDATE conversations SET title = ? WHERE id = ?",
                             (title, conversation_id))
            if cur.rowcount == 0:
                raise _missing_conversation(conversation_id)

    def delete_conversation(self, conversation_id: str) -> None:
        """Delete a conversation and (by cascade) its messages; deleting a missing one is a no-op."""
        with self._write() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def update_settings(self, conversation_id: str, settings: dict) -> None:
        """Merge `settings` into the stored ones (keys not given are kept)."""
        with self._write() as db:
            row = db.execute("SELECT settings FROM conversations WHERE id = ?",
                             (conversation_id,)).fetchone()
            if row is None:
                raise _missing_conversation(conversation_id)
            merged = {**json.loads(row[0]), **settings}
            db.execute("UPDATE conversations SET settings = ? WHERE id = ?",
                       (json.dumps(merged), conversation_id))

    # -- messages --------------------------------------------------------------------------

    def add_message(self, conversation_id: str, role: str, content: str,
                    finish_reason: str | None = None, meta: dict | None = None) -> StoredMessage:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        with self._write() as db:
            now = self._now()
            if self._touch(db, conversation_id, now) == 0:
                raise _missing_conversation(conversation_id)
            (seq,) = db.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM messages "
                                "WHERE conversation_id = ?", (conversation_id,)).fetchone()
            cur = db.execute("INSERT INTO messages (conversation_id, seq, role, content, "
                             "finish_reason, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (conversation_id, seq, role, content, finish_reason,
                              _dump_meta(meta), now))
            message_id = cur.lastrowid
        assert message_id is not None  # an INSERT always sets it
        return StoredMessage(message_id, conversation_id, seq, role, content, finish_reason,
                             _load_meta(_dump_meta(meta)), now)

    def update_message(self, message_id: int, content: str | None = None,
                       finish_reason: str | None = None, meta: dict | None = None) -> StoredMessage:
        """Change what is given (None = keep); `meta` is merged into the stored meta."""
        with self._write() as db:
            row = db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise MacllmError(f"no saved message with id {message_id}")
            old = _message(row)
            new_content = old.content if content is None else content
            new_reason = old.finish_reason if finish_reason is None else finish_reason
            new_meta = old.meta if meta is None else {**old.meta, **meta}
            db.execute("UPDATE messages SET content = ?, finish_reason = ?, meta = ? WHERE id = ?",
                       (new_content, new_reason, _dump_meta(new_meta), message_id))
            self._touch(db, old.conversation_id, self._now())
        return StoredMessage(old.id, old.conversation_id, old.seq, old.role, new_content,
                             new_reason, _load_meta(_dump_meta(new_meta)), old.created_at)

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq",
                              (conversation_id,)).fetchall()
        return [_message(row) for row in rows]

    def last_message(self, conversation_id: str) -> StoredMessage | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM messages WHERE conversation_id = ? "
                             "ORDER BY seq DESC LIMIT 1", (conversation_id,)).fetchone()
        return None if row is None else _message(row)

    def delete_messages_from(self, conversation_id: str, seq: int) -> None:
        """Delete messages with seq >= `seq` (regenerate, edit-and-resend)."""
        with self._write() as db:
            db.execute("DELETE FROM messages WHERE conversation_id = ? AND seq >= ?",
                       (conversation_id, seq))
            self._touch(db, conversation_id, self._now())

    def export_markdown(self, conversation_id: str) -> str:
        return render_markdown(self.get_conversation(conversation_id),
                               self.messages(conversation_id))

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction; IMMEDIATE so a read-then-write cannot race another process."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise _storage_error(self.path, e, "could not save chats to") from e

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise _storage_error(self.path, e, "could not read chats from") from e

    def _now(self) -> float:
        # Strictly increasing within this store, so "most recently updated" never ties.
        self._last_time = max(time.time(), self._last_time + 1e-6)
        return self._last_time

    @staticmethod
    def _touch(db: sqlite3.Connection, conversation_id: str, now: float) -> int:
        return db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?",
                          (now, conversation_id)).rowcount


# -- opening ---------------------------------------------------------------------------------

def _open(path: Path) -> tuple[sqlite3.Connection, bool]:
    """The connection, and whether the file can be written (a read-only one still shows its chats)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private_file(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per write.
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as e:
        raise _storage_error(path, e, "cannot open chat database") from e
    try:
        return conn, _check_or_create_schema(conn, path)
    except MacllmError:
        conn.close()
        raise
    except sqlite3.Error as e:
        conn.close()
        raise _storage_error(path, e, "cannot open chat database") from e


def _check_or_create_schema(conn: sqlite3.Connection, path: Path) -> bool:
    """Refuses foreign and damaged files before anything is written to them; returns whether it is writable."""
    _check_ours(conn, path)  # first read: raises "not a database" for foreign files
    # A damaged page otherwise shows up only when a chat on it is read, long after start-up. Reads every page
    # once (~2 ms per MB).
    if conn.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
        raise _damaged(path, "SQLite's check found damaged pages")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode: a killed process loses nothing committed; only power loss may lose
    # the last commits (the file stays consistent). FULL would fsync on every streamed update.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Checked again under the write lock: another process may have created it meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
            return True
        # A read-only file opens and reads fine; only a page write says so. This one is rolled back.
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.Error as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if _is_read_only(e):
            return False
        raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0 and not tables:
        return  # a new, empty file: the schema is created next
    if app_id != APPLICATION_ID or not {"conversations", "messages"} <= tables:
        raise _not_ours(path, "a SQLite file without macllm's tables")
    if version > SCHEMA_VERSION:
        raise ChatStoreError(path, f"{path} was written by a newer macllm (chat schema {version}); "
                             "update macllm, or move the file away to start a new chat history")


def _not_ours(path: Path, what: str) -> ChatStoreError:
    return ChatStoreError(path, f"{path} is not a usable macllm chat database ({what}); move it away "
                          "(nothing was changed) and macllm will start a new one")


def _damaged(path: Path, what: str) -> ChatStoreError:
    return ChatStoreError(path, f"{path} is damaged ({what}); macllm left it as it is: `sqlite3 {path} .recover` "
                          "may save its chats, then move it away and macllm will start a new one")


def read_only_error(path: Path) -> ChatStoreError:
    return ChatStoreError(path, f"{path} is read-only, so new chats and answers cannot be saved; make it and its "
                          "folder writable (or set MACLLM_HOME to a writable folder)")


def _is_read_only(e: Exception) -> bool:
    return getattr(e, "sqlite_errorname", "").startswith("SQLITE_READONLY")


def _storage_error(path: Path, e: Exception, doing: str) -> ChatStoreError:
    name = getattr(e, "sqlite_errorname", "")
    if name.startswith("SQLITE_CORRUPT"):
        return _damaged(path, str(e))
    if name.startswith("SQLITE_NOTADB"):
        return _not_ours(path, f"damaged or not SQLite: {e}")
    if _is_read_only(e):
        return read_only_error(path)
    return ChatStoreError(path, f"{doing} {path}: {e}; check that the folder is writable and the disk "
                          "has free space (or set MACLLM_HOME)")


# -- rows ------------------------------------------------------------------------------------

def _conversation(row: tuple) -> StoredConversation:
    conv_id, title, created_at, updated_at, settings = row
    return StoredConversation(conv_id, title, created_at, updated_at, json.loads(settings))


def _message(row: tuple) -> StoredMessage:
    message_id, conv_id, seq, role, content, finish_reason, meta, created_at = row
    return StoredMessage(message_id, conv_id, seq, role, content, finish_reason,
                         _load_meta(meta), created_at)


def _missing_conversation(conversation_id: str) -> MacllmError:
    return MacllmError(f"no saved conversation with id {conversation_id!r}")


def _dump_meta(meta: dict | None) -> str | None:
    return json.dumps(meta) if meta else None


def _load_meta(text: str | None) -> dict:
    return json.loads(text) if text else {}


# -- titles and export -----------------------------------------------------------------------

def auto_title(text: str, limit: int = 40) -> str:
    """A conversation title from the first user message: its first non-empty line, shortened."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    first = " ".join(first.split())
    if not first:
        return DEFAULT_TITLE
    if len(first) <= limit:
        return first
    cut = first[:limit]
    space = cut.rfind(" ")
    if space >= limit // 2:  # end on a word boundary unless that throws away too much
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


_ROLE_HEADINGS = {"system": "System", "user": "User", "assistant": "Assistant"}
_FINISH_NOTES = {"cancelled": "stopped", "length": "cut off at the token limit"}


def render_markdown(conv: StoredConversation, messages: list[StoredMessage]) -> str:
    title = " ".join(conv.title.split()) or DEFAULT_TITLE
    parts = [f"# {title}", f"*Exported from macllm · started {_local_time(conv.created_at)}*"]
    for m in messages:
        parts.append(f"## {_ROLE_HEADINGS.get(m.role, m.role)}")
        details = _meta_line(m.meta) if m.role == "assistant" else ""
        if details:
            parts.append(f"*{details}*")
        parts.append(m.content.strip("\n") or "*(empty)*")
        note = _FINISH_NOTES.get(m.finish_reason or "")
        if note:
            parts.append(f"*[{note}]*")
    return "\n\n".join(parts) + "\n"


def _meta_line(meta: dict) -> str:
    items = []
    if meta.get("model"):
        items.append(str(meta["model"]))
    adapters = meta.get("adapters")
    if adapters:
        names = adapters if isinstance(adapters, (list, tuple)) else [adapters]
        items.append("adapters: " + ", ".join(str(a) for a in names))
    stats = meta.get("stats")
    if isinstance(stats, dict):
        if stats.get("generation_tokens"):
            items.append(f"{stats['generation_tokens']} tokens")
        if stats.get("generation_tps"):
            items.append(f"{stats['generation_tps']:.1f} tok/s")
    return " · ".join(items)


def _local_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")
