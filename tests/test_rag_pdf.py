"""PDF notes: text per page (pypdf), citations with page and line, scanned pages listed as skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from macllm.cli import main
from macllm.rag.indexer import index_notes
from macllm.rag.retrieve import Retriever
from macllm.rag.status import file_statuses
from macllm.rag.store import Store
from tests.pdf_files import make_pdf


@pytest.fixture
def notes(tmp_path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "paper.pdf").write_bytes(make_pdf([
        ["Cats purr when they are content."],
        [],  # a scanned page: no text layer
        ["The second chapter.", "", "Dogs bark at the mailman every morning."],
    ]))
    (root / "scan.pdf").write_bytes(make_pdf([[], []]))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    return root


def test_pdf_pages_are_indexed_and_cited_by_page_and_line(tmp_path, notes, embedder):
    store = Store(tmp_path / "i.sqlite")
    summary = index_notes(store, embedder, [notes])
    assert summary.added == 1 and store.counts() == (1, 2)  # page 3's two lines fit one chunk
    rows = store.conn.execute("SELECT heading, line_start, line_end, text FROM chunks ORDER BY id").fetchall()
    assert rows[0] == ("Page 1", 1, 1, "Cats purr when they are content.")
    assert rows[1][:2] == ("Page 3", 1) and rows[1][3].startswith("The second chapter.")
    assert rows[1][3].splitlines()[rows[1][2] - 1] == "Dogs bark at the mailman every morning."
    assert any("paper.pdf: 1 scanned page(s) without text skipped: 2" in w for w in summary.warnings)
    assert any("scan.pdf: scanned PDF (no text on any page)" in w for w in summary.warnings)
    assert any("broken.pdf: unreadable PDF" in w for w in summary.warnings)
    results = Retriever(store, embedder).search("mailman", k=1, mode="bm25")
    assert results[0].location.endswith("paper.pdf (page 3):" + f"{results[0].line_start}-{results[0].line_end}")
    assert "mailman" in results[0].text
    states = {Path(s.path).name: (s.state, s.detail) for s in file_statuses(store)}
    assert states["scan.pdf"] == ("skipped", "scanned PDF (no text on any page)")
    assert states["broken.pdf"][0] == "failed"
    assert states["paper.pdf"][0] == "indexed" and "scanned page(s) without text skipped: 2" in states["paper.pdf"][1]


def test_search_cli_shows_the_page(tmp_path, notes, bert_folder, capsys, monkeypatch):
    monkeypatch.setenv("MACLLM_HOME", str(tmp_path / "home"))
    index = str(tmp_path / "n.sqlite")
    assert main(["index", str(notes), "--index", index, "--embedder", str(bert_folder)]) == 0
    capsys.readouterr()
    assert main(["search", "purr", "--index", index, "--mode", "bm25", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{notes / 'paper.pdf'} (page 1):1-1" in out
