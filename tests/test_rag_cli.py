"""`macllm index`, `search` and `ask` end to end on tiny models; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macllm.cli import main


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))


@pytest.fixture
def notes(tmp_path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "cats.md").write_text("# Cats\n\nCats purr and sleep all day.\n\n## Food\n\nCats eat fish.\n")
    (root / "dogs.txt").write_text("Dogs bark at the mailman.\n")
    (root / "bad.txt").write_bytes(b"caf\xe9 \xff\xfe notes")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_then_search(capsys, notes, bert_folder, tmp_path):
    index = str(tmp_path / "n.sqlite")
    code, out, err = run(capsys, "index", str(notes), "--index", index, "--embedder", str(bert_folder))
    assert code == 0, err
    assert "3 added, 0 changed, 0 removed, 0 unchanged, 0 skipped" in out
    assert "bad.txt: not UTF-8" in err
    code, out, _ = run(capsys, "index", str(notes), "--index", index)  # the index remembers its embedder
    assert code == 0 and "0 added, 0 changed, 0 removed, 3 unchanged" in out and "0 embedded" in out

    code, out, _ = run(capsys, "search", "fish", "--index", index, "--mode", "bm25", "--json")
    results = json.loads(out)
    assert code == 0 and results[0]["heading"] == "Cats > Food" and results[0]["line_start"] == 7
    assert set(results[0]) == {"path", "heading", "line_start", "line_end", "score", "text"}
    code, out, _ = run(capsys, "search", "bark", "--index", index, "-k", "1")
    assert code == 0 and "dogs.txt:1-1" in out

    queries = tmp_path / "q.txt"
    queries.write_text("fish\n\nmailman\n")
    code, out, _ = run(capsys, "search", "--queries", str(queries), "--index", index, "-k", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["query"] for line in lines] == ["fish", "mailman"] and len(lines[0]["results"]) == 2


def test_rebuild_and_named_index(capsys, notes, bert_folder, tmp_path):
    code, out, _ = run(capsys, "index", str(notes), "--embedder", str(bert_folder))
    assert code == 0 and (tmp_path / "home" / "indexes" / "notes.sqlite").exists()
    code, out, _ = run(capsys, "index", str(notes), "--rebuild")
    assert code == 0 and "3 added" in out


@pytest.mark.parametrize("argv, message", [
    (["search", "x", "--index", "{tmp}/missing.sqlite"], "no notes index at"),
    (["search", "x", "--index", "{tmp}/junk.sqlite"], "not a macllm notes index"),
    (["search", "x", "--index", "{tmp}/empty.sqlite"], "is empty"),
    (["ask", "what?", "--index", "{tmp}/empty.sqlite"], "is empty"),
    (["index", "{tmp}/nowhere"], "no such folder"),
    (["search", "--index", "{tmp}/empty.sqlite"], "give a query or --queries"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, bert_folder, argv, message):
    (tmp_path / "junk.sqlite").write_bytes(b"not sqlite" * 200)
    from macllm.rag.store import Store

    Store(tmp_path / "empty.sqlite").close()
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ask_cites_sources(capsys, notes, bert_folder, tmp_path, tiny_llama_folder):
    index = str(tmp_path / "n.sqlite")
    assert run(capsys, "index", str(notes), "--index", index, "--embedder", str(bert_folder))[0] == 0
    code, out, err = run(capsys, "ask", "what do cats eat?", "--index", index, "--model", str(tiny_llama_folder),
                         "--max-tokens", "5", "-k", "2")
    assert code == 0, err
    sources = out.split("Sources:")[1].strip().splitlines()
    assert len(sources) == 2 and sources[0].startswith("[1] ") and sources[1].startswith("[2] ")
    assert all(s.split()[1].rsplit(":", 1)[1].count("-") == 1 for s in sources)  # path:start-end


def test_prompt_fits_context_and_numbers_sources(tiny_llama_folder):
    from macllm.loader import load_model
    from macllm.rag.answer import fit_sources, user_message
    from macllm.rag.retrieve import SearchResult

    tok = load_model(str(tiny_llama_folder), progress=False).tokenizer
    results = [SearchResult(f"/n/{i}.md", "H", 1, 2, 1.0, "word " * 100, i) for i in range(10)]
    sources, tokens = fit_sources("q?", results, tok, context_length=1500, max_new_tokens=100)
    assert 0 < len(sources) < 10 and tokens <= 1500 - 100
    text = user_message("q?", sources)
    assert "[1] 0.md — H" in text and f"[{len(sources)}]" in text
    from macllm.errors import MacllmError

    with pytest.raises(MacllmError, match="question alone"):
        fit_sources("long " * 500, results, tok, context_length=300, max_new_tokens=100)


def test_store_damaged_past_its_header(capsys, notes, bert_folder, tmp_path):
    from macllm.rag.embedder import Embedder
    from macllm.rag.indexer import index_notes
    from macllm.rag.store import Store

    db = tmp_path / "d.sqlite"
    store = Store(db)
    index_notes(store, Embedder(bert_folder), [notes])
    store.close()  # checkpoints the WAL into the file
    data = bytearray(db.read_bytes())
    data[4096:] = b"\xde\xad" * ((len(data) - 4096) // 2)
    db.write_bytes(bytes(data))
    code, out, err = run(capsys, "search", "cats", "--index", str(db))
    assert code == 2 and "--rebuild" in err and len(err.strip().splitlines()) == 1


def test_index_status_lists_each_file_and_bad_flag_mixes_are_one_line(capsys, notes, bert_folder, tmp_path):
    index = str(tmp_path / "n.sqlite")
    (notes / "blob.md").write_bytes(b"\0\0binary")
    assert run(capsys, "index", str(notes), "--index", index, "--embedder", str(bert_folder))[0] == 0
    (notes / "later.md").write_text("# Later\n\nwritten after indexing\n")
    code, out, _ = run(capsys, "index", "--status", str(notes), "--index", index)
    lines = out.splitlines()
    assert code == 0
    assert f"indexed  {notes / 'cats.md'}  (2 chunks)" in lines
    assert f"skipped  {notes / 'blob.md'}  (binary (not a text file))" in lines
    assert f"new      {notes / 'later.md'}  (not indexed yet)" in lines
    assert lines[-1] == f"3 indexed, 1 new, 1 skipped ({index})"
    code, _, err = run(capsys, "index", "--status", "--rebuild", "--index", index)
    assert code == 2 and err.count("\n") == 1 and "--status only reads the index" in err
    code, _, err = run(capsys, "index", "--index", index)
    assert code == 2 and "name the folders to index" in err
    code, _, err = run(capsys, "index", "--status", "--index", str(tmp_path / "none.sqlite"))
    assert code == 2 and "no notes index at" in err
