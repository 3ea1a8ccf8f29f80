"""ChatStore: saved conversations in SQLite (CRUD, ordering, errors, threads, crash safety)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from macllm.errors import MacllmError
from macllm.storage.chat_store import ChatStore, ChatStoreError, StoredMessage, auto_title, fresh_path
from tests.chat_store_helpers import damage_pages, filled_store, read_only

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    with ChatStore(tmp_path / "chats.sqlite3") as s:
        yield s


def test_default_path_is_in_macllm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    with ChatStore() as s:
        assert s.path == tmp_path / "home" / "chats.sqlite3"
        s.create_conversation()
    assert (tmp_path / "home" / "chats.sqlite3").is_file()


def test_file_is_wal_with_schema_version(store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def test_conversation_crud(store):
    conv = store.create_conversation(settings={"temperature": 0.7})
    assert conv.title == "New chat" and len(conv.id) == 12
    assert conv.settings == {"temperature": 0.7}
    assert store.get_conversation(conv.id) == conv

    store.rename_conversation(conv.id, "Rust lifetimes")
    store.update_settings(conv.id, {"top_p": 0.9, "temperature": 0.2})
    got = store.get_conversation(conv.id)
    assert got.title == "Rust lifetimes"
    assert got.settings == {"temperature": 0.2, "top_p": 0.9}

    store.delete_conversation(conv.id)
    with pytest.raises(MacllmError, match="no saved conversation"):
        store.get_conversation(conv.id)
    store.delete_conversation(conv.id)  # already gone: no error
    for call in (lambda: store.rename_conversation(conv.id, "x"),
                 lambda: store.update_settings(conv.id, {}),
                 lambda: store.add_message(conv.id, "user", "hi")):
        with pytest.raises(MacllmError, match="no saved conversation"):
            call()


def test_list_is_most_recently_updated_first(store):
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    c = store.create_conversation("c")
    assert [x.title for x in store.list_conversations()] == ["c", "b", "a"]
    store.add_message(a.id, "user", "bump a")
    assert [x.title for x in store.list_conversations()] == ["a", "c", "b"]
    msg = store.add_message(b.id, "user", "bump b")
    store.add_message(c.id, "user", "bump c")
    store.update_message(msg.id, content="edited b")
    assert [x.title for x in store.list_conversations()] == ["b", "c", "a"]
    store.rename_conversation(a.id, "renamed a")  # a rename does not reorder
    assert [x.title for x in store.list_conversations()] == ["b", "c", "renamed a"]


def test_messages_in_seq_order_and_updates(store):
    conv = store.create_conversation()
    sys_msg = store.add_message(conv.id, "system", "Be brief.")
    user = store.add_message(conv.id, "user", "Hello?")
    answer = store.add_message(conv.id, "assistant", "", meta={"model": "smollm2"})
    assert [m.seq for m in (sys_msg, user, answer)] == [0, 1, 2]

    updated = store.update_message(answer.id, content="Hi!", finish_reason="stop",
                                   meta={"stats": {"generation_tokens": 3}})
    assert updated.meta == {"model": "smollm2", "stats": {"generation_tokens": 3}}
    stored = store.messages(conv.id)
    assert [(m.role, m.content) for m in stored] == [
        ("system", "Be brief."), ("user", "Hello?"), ("assistant", "Hi!")]
    assert stored[2] == updated
    assert store.last_message(conv.id) == updated
    assert store.update_message(answer.id).content == "Hi!"  # None keeps what is there
    tupled = store.add_message(conv.id, "user", "t", meta={"adapters": ("a", "b")})
    assert tupled == store.last_message(conv.id)  # returned as it reads back (JSON)
    store.delete_messages_from(conv.id, tupled.seq)
    assert store.messages("nope") == [] and store.last_message("nope") is None
    with pytest.raises(ValueError):
        store.add_message(conv.id, "tool", "x")
    with pytest.raises(MacllmError, match="no saved message"):
        store.update_message(12345, content="x")


def test_delete_messages_from_then_continue(store):
    conv = store.create_conversation()
    for i in range(5):
        store.add_message(conv.id, "user" if i % 2 == 0 else "assistant", f"m{i}")
    store.delete_messages_from(conv.id, 3)  # regenerate the answer at seq 3
    assert [m.content for m in store.messages(conv.id)] == ["m0", "m1", "m2"]
    again = store.add_message(conv.id, "assistant", "m3 again")
    assert again.seq == 3
    store.delete_messages_from(conv.id, 0)
    assert store.messages(conv.id) == [] and store.last_message(conv.id) is None


def test_delete_conversation_cascades_to_messages(store):
    keep = store.create_conversation("keep")
    gone = store.create_conversation("gone")
    store.add_message(keep.id, "user", "stay")
    store.add_message(gone.id, "user", "go")
    store.add_message(gone.id, "assistant", "going")
    store.delete_conversation(gone.id)
    db = sqlite3.connect(store.path)
    assert db.execute("SELECT conversation_id, content FROM messages").fetchall() == [
        (keep.id, "stay")]
    db.close()


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        conv = s.create_conversation("persist", {"adapters": ["pirate"]})
        s.add_message(conv.id, "user", "ahoy\nmatey")
        s.add_message(conv.id, "assistant", "Arr.", finish_reason="stop", meta={"model": "m"})
        before = (s.list_conversations(), s.messages(conv.id))
    with ChatStore(path) as s:
        assert (s.list_conversations(), s.messages(conv.id)) == before
        assert s.add_message(conv.id, "user", "more").seq == 2


def test_export_markdown(store):
    conv = store.create_conversation("Pirate\ntalk")
    store.add_message(conv.id, "system", "Talk like a pirate.")
    store.add_message(conv.id, "user", "Hello")
    store.add_message(conv.id, "assistant", "Ahoy!\n", finish_reason="stop",
                      meta={"model": "smollm2-135m", "adapters": ["pirate"],
                            "stats": {"generation_tokens": 3, "generation_tps": 41.25}})
    store.add_message(conv.id, "user", "Tell me more")
    store.add_message(conv.id, "assistant", "Once upon", finish_reason="cancelled")
    text = store.export_markdown(conv.id)
    head, started, *rest = text.split("\n\n")
    assert head == "# Pirate talk"
    assert started.startswith("*Exported from macllm · started ")
    assert "\n\n".join(rest) == (
        "## System\n\nTalk like a pirate.\n\n"
        "## User\n\nHello\n\n"
        "## Assistant\n\n*smollm2-135m · adapters: pirate · 3 tokens · 41.2 tok/s*\n\nAhoy!\n\n"
        "## User\n\nTell me more\n\n"
        "## Assistant\n\nOnce upon\n\n*[stopped]*\n")


def test_auto_title():
    assert auto_title("  How do I sort a dict?\nby value") == "How do I sort a dict?"
    assert auto_title("\n\n  second line wins when first is empty") == (
        "second line wins when first is empty")
    long = auto_title("Explain the difference between processes and threads in detail please")
    assert long == "Explain the difference between…"
    assert len(long) <= 41
    assert auto_title("x" * 100) == "x" * 40 + "…"
    assert auto_title("   \n ") == "New chat"


def test_many_threads_share_one_store(store):
    shared = store.create_conversation("shared")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            own = store.create_conversation(f"t{n}")
            for i in range(25):
                store.add_message(shared.id, "user", f"{n}:{i}")
                m = store.add_message(own.id, "assistant", "")
                store.update_message(m.id, content=f"{n}:{i}", finish_reason="stop")
                store.list_conversations()
        except BaseException as e:  # noqa: BLE001  (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    msgs = store.messages(shared.id)
    assert [m.seq for m in msgs] == list(range(100))
    assert sorted(m.content for m in msgs) == sorted(f"{n}:{i}" for n in range(4) for i in range(25))
    for conv in store.list_conversations():
        if conv.id != shared.id:
            assert [m.content for m in store.messages(conv.id)] == [
                f"{conv.title[1:]}:{i}" for i in range(25)]


def test_not_sqlite_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "chats.sqlite3"
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(MacllmError, match="not a usable macllm chat database.*move it away") as info:
        ChatStore(path)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "chats.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(MacllmError, match="not a usable macllm chat database.*move it away"):
        ChatStore(path)
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    db.close()
    assert tables == ["recipes"]


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "chats.sqlite3"
    ChatStore(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(MacllmError, match="newer macllm"):
        ChatStore(path)


def test_unopenable_location(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(MacllmError, match="cannot open chat database"):
        ChatStore(blocker / "chats.sqlite3")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(MacllmError, match="cannot open chat database"):
            ChatStore(folder / "chats.sqlite3")
    finally:
        folder.chmod(0o755)


def test_full_disk_is_a_clear_error_and_store_stays_usable(store):
    conv = store.create_conversation()
    store.add_message(conv.id, "user", "fits")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # stands in for a full disk
    with pytest.raises(MacllmError, match="could not save chats.*free space"):
        store.add_message(conv.id, "assistant", "x" * 100_000)
    assert [m.content for m in store.messages(conv.id)] == ["fits"]
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.add_message(conv.id, "assistant", "ok now").seq == 1


_CRASH_WRITER = """
import sys
from pathlib import Path
from macllm.storage.chat_store import ChatStore

store = ChatStore(Path(sys.argv[1]))
conv = store.create_conversation("crash")
print(conv.id, flush=True)
seq = 0
while True:
    role = "user" if seq % 2 == 0 else "assistant"
    msg = store.add_message(conv.id, role, "", meta={"n": seq})
    store.update_message(msg.id, content=f"message {seq} " + "x" * 500, finish_reason="stop")
    print(msg.seq, flush=True)
    seq += 1
"""


def test_sigkill_mid_loop_loses_no_committed_message(tmp_path):
    path = tmp_path / "chats.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_WRITER, str(path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        conv_id = proc.stdout.readline().strip()
        reported = [int(proc.stdout.readline()) for _ in range(40)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert reported == list(range(40))

    with ChatStore(path) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        msgs = s.messages(conv_id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        assert len(msgs) >= 40
        for m in msgs[:40]:  # finished before the kill: complete
            assert m.content == f"message {m.seq} " + "x" * 500
            assert m.finish_reason == "stop" and m.meta == {"n": m.seq}
        for m in msgs[40:]:  # written around the kill: whole transactions only
            assert m.content in ("", f"message {m.seq} " + "x" * 500)
        assert isinstance(s.add_message(conv_id, "user", "after crash"), StoredMessage)


def test_second_process_sees_writes_without_reopen(tmp_path):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as a, ChatStore(path) as b:
        conv = a.create_conversation("from a")
        b.add_message(conv.id, "user", "from b")
        assert [m.content for m in a.messages(conv.id)] == ["from b"]


# -- problem files: read-only, damaged; private by default -----------------------------------------

def test_read_only_file_opens_for_reading_and_says_it_cannot_save(tmp_path):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        conv = s.create_conversation("kept")
        s.add_message(conv.id, "user", "hello")
    before = path.read_bytes()
    with read_only(path), ChatStore(path) as s:
        assert s.writable is False  # known at open, before anything is typed
        assert [c.title for c in s.list_conversations()] == ["kept"]
        with pytest.raises(ChatStoreError, match="read-only") as info:
            s.add_message(conv.id, "user", "lost?")
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert info.value.path == path
    assert path.read_bytes() == before


def test_writable_file_says_so(store):
    assert store.writable is True


def test_damaged_pages_are_refused_at_open_and_left_as_they_are(tmp_path):
    path = tmp_path / "chats.sqlite3"
    filled_store(path)
    damage_pages(path)
    before = path.read_bytes()
    with pytest.raises(ChatStoreError, match="damaged") as info:
        ChatStore(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert ".recover" in message  # what to do: sqlite3's recovery, then move it away
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chats.sqlite3"]  # no WAL left beside it


def test_store_errors_are_chat_store_errors(tmp_path):
    path = tmp_path / "chats.sqlite3"
    path.write_text("not a database\n" * 100)
    with pytest.raises(ChatStoreError) as info:
        ChatStore(path)
    assert isinstance(info.value, MacllmError) and info.value.path == path


def test_new_chat_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        with ChatStore(tmp_path / "chats.sqlite3") as s:
            s.add_message(s.create_conversation().id, "user", "private")
            files = sorted(tmp_path.iterdir())
            assert [p.name for p in files] == ["chats.sqlite3", "chats.sqlite3-shm", "chats.sqlite3-wal"]
            for p in files:
                assert p.stat().st_mode & 0o777 == 0o600, p.name
    finally:
        os.umask(old)


def test_fresh_path_is_a_new_file_beside_the_old_one(tmp_path):
    from datetime import datetime

    old = tmp_path / "chats.sqlite3"
    when = datetime(2025, 3, 4, 5, 6, 7)
    assert fresh_path(old, when) == tmp_path / "chats-20250304-050607.sqlite3"
    (tmp_path / "chats-20250304-050607.sqlite3").write_bytes(b"")
    assert fresh_path(old, when) == tmp_path / "chats-20250304-050607-2.sqlite3"


def test_add_conversation_with_messages_is_one_transaction(store):
    shown = [("user", "hi", None, {}), ("assistant", "hello", "stop", {"model": "m"})]
    conv = store.add_conversation_with_messages("carried", {"temperature": 0.1}, shown)
    got = store.messages(conv.id)
    assert [(m.role, m.content, m.finish_reason, m.meta) for m in got] == shown
    assert store.get_conversation(conv.id).settings == {"temperature": 0.1}
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # stands in for a full disk
    with pytest.raises(ChatStoreError):
        store.add_conversation_with_messages("too big", {}, [("user", "x" * 100_000, None, {})])
    assert [c.title for c in store.list_conversations()] == ["carried"]  # nothing half-written
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert store.add_conversation_with_messages("same id", {}, [], conversation_id="abc123").id == "abc123"
