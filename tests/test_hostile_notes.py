"""Hostile input to `macllm index`, `search` and `ask`: one line, exit 2, and nothing that is not ours is lost.

`--rebuild` may only replace a macllm notes index (or nothing); any other file or a folder is refused untouched.
A query with nothing to search for is refused rather than answered with arbitrary chunks.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from macllm.cli import main
from macllm.errors import MacllmError
from macllm.rag.chunking import Chunk
from macllm.rag.embedder import Embedder
from macllm.rag.indexer import index_notes
from macllm.rag.retrieve import Retriever
from macllm.rag.store import Store, delete_index
from macllm.storage.chat_store import ChatStore


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def notes(tmp_path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "cats.md").write_text("# Cats\n\nCats purr and sleep all day.\n\n## Food\n\nCats eat fish.\n")
    (root / "dogs.txt").write_text("Dogs bark at the mailman.\n")
    return root


@pytest.fixture
def index(tmp_path, notes, bert_folder) -> Path:
    path = tmp_path / "n.sqlite"
    store = Store(path)
    index_notes(store, Embedder(bert_folder), [notes])
    store.close()
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_exit_2(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("macllm: error: ") and "Traceback" not in err


def fingerprint(*paths: Path) -> dict[str, str | None]:
    """Content hash of each path (None if absent): 'untouched' means equal before and after."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in paths}


def other_apps_database(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance REAL)")
    conn.execute("INSERT INTO accounts(balance) VALUES (1234.5)")
    conn.commit()
    conn.close()
    return path


# ---------------------------------------------------------------- --rebuild replaces only our own files


def test_rebuild_refuses_another_apps_sqlite_database(capsys, tmp_path, notes, bert_folder):
    db = other_apps_database(tmp_path / "accounts.db")
    before = fingerprint(db)
    code, _, err = run(capsys, "index", notes, "--index", db, "--rebuild", "--embedder", bert_folder)
    one_line_exit_2(code, err)
    assert "not a macllm notes index" in err and "--rebuild" not in err
    assert fingerprint(db) == before


def test_rebuild_refuses_a_text_file(capsys, tmp_path, notes, bert_folder):
    text = tmp_path / "thesis.txt"
    text.write_text("Chapter 1. Four years of work.\n" * 100)
    before = fingerprint(text)
    code, _, err = run(capsys, "index", notes, "--index", text, "--rebuild", "--embedder", bert_folder)
    one_line_exit_2(code, err)
    assert "not a macllm notes index" in err and fingerprint(text) == before


def test_rebuild_refuses_the_chat_store(capsys, home, notes, bert_folder):
    chats = home / "chats.sqlite3"
    with ChatStore(chats) as store:
        conv = store.create_conversation("precious")
        store.add_message(conv.id, "user", "do not lose me")
        companions = [chats, Path(f"{chats}-wal"), Path(f"{chats}-shm")]
        before = fingerprint(*companions)
        code, _, err = run(capsys, "index", notes, "--index", chats, "--rebuild", "--embedder", bert_folder)
        one_line_exit_2(code, err)
        assert "not a macllm notes index" in err and fingerprint(*companions) == before
    with ChatStore(chats) as store:
        assert [m.content for m in store.messages(conv.id)] == ["do not lose me"]


def test_rebuild_refuses_a_folder(capsys, tmp_path, notes, bert_folder):
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "index", notes, "--index", folder, "--rebuild", "--embedder", bert_folder)
    one_line_exit_2(code, err)
    assert "is a folder" in err and "--rebuild" not in err and (folder / "keep.txt").read_text() == "mine"


def test_index_into_a_folder_without_rebuild(capsys, tmp_path, notes, bert_folder):
    folder = tmp_path / "folder.sqlite"
    folder.mkdir()
    code, _, err = run(capsys, "index", notes, "--index", folder, "--embedder", bert_folder)
    one_line_exit_2(code, err)
    assert "is a folder" in err and "--rebuild" not in err and list(folder.iterdir()) == []


def test_foreign_database_error_does_not_recommend_rebuild(capsys, tmp_path, notes, bert_folder):
    """Without --rebuild the foreign file is refused too, and the message points elsewhere, not at --rebuild."""
    db = other_apps_database(tmp_path / "accounts.db")
    before = fingerprint(db)
    for argv in (["index", notes, "--index", db, "--embedder", bert_folder], ["search", "cats", "--index", db]):
        code, _, err = run(capsys, *argv)
        one_line_exit_2(code, err)
        assert "not a macllm notes index" in err and "--rebuild" not in err
    assert fingerprint(db) == before


def test_empty_sqlite_file_of_another_app_is_not_taken_over(capsys, tmp_path, notes, bert_folder):
    """No tables yet, but another application's id in the header: not ours to turn into an index."""
    db = tmp_path / "other.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA application_id=1234")
    conn.close()
    before = fingerprint(db)
    code, _, err = run(capsys, "index", notes, "--index", db, "--embedder", bert_folder)
    one_line_exit_2(code, err)
    assert fingerprint(db) == before


def test_rebuild_replaces_our_own_index(capsys, index, notes, bert_folder):
    code, out, err = run(capsys, "index", notes, "--index", index, "--rebuild", "--embedder", bert_folder)
    assert code == 0, err
    assert "2 added" in out


def test_rebuild_replaces_a_damaged_index_of_ours(capsys, index, notes, bert_folder):
    data = bytearray(index.read_bytes())
    data[4096:] = b"\xde\xad" * ((len(data) - 4096) // 2)
    index.write_bytes(bytes(data))
    code, _, err = run(capsys, "search", "cats", "--index", index)
    one_line_exit_2(code, err)
    assert "--rebuild" in err  # ours, so rebuilding it is the advice
    code, out, err = run(capsys, "index", notes, "--index", index, "--rebuild", "--embedder", bert_folder)
    assert code == 0 and "2 added" in out, err


def test_rebuild_replaces_an_index_killed_before_its_first_checkpoint(capsys, tmp_path, notes, bert_folder):
    """A fresh index whose header page still sits in the WAL (indexer killed) is recognised as ours."""
    path = tmp_path / "fresh.sqlite"
    store = Store(path)
    copies = {suffix: Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal")}
    store.close()
    for suffix, data in copies.items():  # the files as a SIGKILL would have left them
        Path(f"{path}{suffix}").write_bytes(data)
    code, out, err = run(capsys, "index", notes, "--index", path, "--rebuild", "--embedder", bert_folder)
    assert code == 0 and "2 added" in out, err


def test_rebuild_of_an_absent_index(capsys, tmp_path, notes, bert_folder):
    new = tmp_path / "new.sqlite"
    code, out, err = run(capsys, "index", notes, "--index", new, "--rebuild", "--embedder", bert_folder)
    assert code == 0 and "2 added" in out, err


def test_index_under_a_file_is_one_line(capsys, tmp_path, notes, bert_folder):
    blocker = tmp_path / "plain"
    blocker.write_text("a file, not a folder")
    code, _, err = run(capsys, "index", notes, "--index", blocker / "n.sqlite", "--embedder", bert_folder)
    one_line_exit_2(code, err)
    assert blocker.read_text() == "a file, not a folder"


# ---------------------------------------------------------------- queries with nothing to search for


@pytest.mark.parametrize("query", ["", "   ", "?!", " ... -- ", "\t", "_"])
def test_search_refuses_a_query_without_words(capsys, index, query):
    code, _, err = run(capsys, "search", query, "--index", index)
    one_line_exit_2(code, err)
    assert "nothing to search for" in err


@pytest.mark.parametrize("query", ["   ", "?!"])
def test_ask_refuses_a_question_without_words_before_loading_a_model(capsys, index, query):
    code, _, err = run(capsys, "ask", query, "--index", index, "--model", "/nowhere/model.gguf")
    one_line_exit_2(code, err)
    assert "nothing to search for" in err


def test_retriever_refuses_a_query_without_words(index, bert_folder):
    retriever = Retriever(Store(index, create=False), Embedder(bert_folder))
    for mode in ("hybrid", "bm25", "dense"):
        with pytest.raises(MacllmError, match="nothing to search for"):
            retriever.search("?!", mode=mode)
    assert retriever.search("猫", mode="bm25") == []  # a CJK character is something to search for
    assert retriever.search("fish", k=1)[0].heading == "Cats > Food"


def test_queries_file_skips_blank_lines(capsys, tmp_path, index):
    queries = tmp_path / "q.txt"
    queries.write_text("fish\n\n   \nmailman\n")
    code, out, err = run(capsys, "search", "--queries", queries, "--index", index, "-k", "1")
    assert code == 0, err
    assert [json.loads(line)["query"] for line in out.splitlines()] == ["fish", "mailman"]


def test_queries_file_refuses_a_line_without_words(capsys, tmp_path, index):
    queries = tmp_path / "q.txt"
    queries.write_text("fish\n\n?!\nmailman\n")
    code, out, err = run(capsys, "search", "--queries", queries, "--index", index)
    one_line_exit_2(code, err)
    assert f"{queries} line 3" in err and "nothing to search for" in err and out == ""


def test_queries_file_with_no_queries(capsys, tmp_path, index):
    queries = tmp_path / "q.txt"
    queries.write_text("\n  \n")
    code, _, err = run(capsys, "search", "--queries", queries, "--index", index)
    one_line_exit_2(code, err)
    assert "no queries" in err


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory) -> Store:
    """A small keyword-searchable store (BM25 needs no embedder)."""
    store = Store(tmp_path_factory.mktemp("fuzz") / "f.sqlite")
    chunks = [Chunk("Cats eat fish AND sleep NEAR the door", "Cats", 1, 2), Chunk("猫はよく寝る", "猫", 3, 4)]
    store.use_embedder("none", 2)
    store.replace_file("/n/a.md", 1, 1, "x", chunks, [b"\0" * 8, b"\0" * 8], "none")
    return store


@settings(max_examples=150, deadline=None)
@given(query=st.text(max_size=40))
def test_any_query_text_is_results_or_a_one_line_refusal(fuzz_store, query):
    """Keyword search on arbitrary text (quotes, FTS5 operators, control characters): never an internal error."""
    try:
        results = Retriever(fuzz_store, embedder=None).search(query, k=3, mode="bm25")
    except MacllmError as e:
        assert "\n" not in str(e)
    else:
        assert len(results) <= 3


@pytest.fixture(scope="module")
def index_bytes(tmp_path_factory, bert_folder) -> bytes:
    """A real, checkpointed index file's bytes (notes of two files) to mutate."""
    folder = tmp_path_factory.mktemp("fuzz-notes")
    (folder / "a.md").write_text("# A\n\nalpha beta\n")
    path = folder / "i.sqlite"
    store = Store(path)
    index_notes(store, Embedder(bert_folder), [folder / "a.md"])
    store.close()
    return path.read_bytes()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_mutated_index_header_is_opened_or_refused_in_one_line(tmp_path_factory, index_bytes, data):
    """Bytes of the header (and of the file's start) changed at random: the index opens, or one line says why;
    when the application id no longer says macllm, --rebuild refuses the file and leaves it as it was."""
    mutated = bytearray(index_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, 199))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("mutated") / "m.sqlite"
    path.write_bytes(bytes(mutated))
    if mutated[68:72] != index_bytes[68:72]:
        try:
            delete_index(path)
        except MacllmError as e:
            assert "not a macllm notes index" in str(e)
            assert path.read_bytes() == mutated
        else:  # only a blank database (no application id, no tables) may go
            assert mutated[68:72] == bytes(4)
    try:
        Store(path).close()
    except MacllmError as e:
        assert "\n" not in str(e)
