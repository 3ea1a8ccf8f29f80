"""The retrieval eval's own data and scoring: hand-written questions that point at real notes (and at the
right lines of the Chinese note), and rank, nDCG, recall and MRR computed as documented."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_data

_spec = importlib.util.spec_from_file_location("eval_rag", REPO / "scripts" / "eval_rag.py")
assert _spec and _spec.loader
eval_rag = importlib.util.module_from_spec(_spec)
sys.modules["eval_rag"] = eval_rag  # dataclasses look their module up there
_spec.loader.exec_module(eval_rag)

ZH = REPO / "scripts" / "data" / "rag_questions_zh.tsv"
HARD = REPO / "scripts" / "data" / "rag_questions_hard.tsv"


def rows(file: Path) -> list[list[str]]:
    return [line.split("\t") for line in file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def test_question_files_are_well_formed():
    english = rows(eval_rag.QUESTIONS)
    assert len(english) >= 50
    assert all(len(r) == 2 and r[0].endswith(".md") and len(r[1].split()) >= 5 for r in english)
    assert len({r[0] for r in english}) == len(english)  # one question per note: each one a different answer
    assert len({r[1] for r in english}) == len(english)
    hard = rows(HARD)
    assert len(hard) >= 40 and len({r[0] for r in hard}) == len(hard) and len({r[1] for r in hard}) == len(hard)
    assert {r[0] for r in hard} <= {r[0] for r in english}  # paraphrases of questions whose notes we checked
    chinese = rows(ZH)
    assert len(chinese) >= 10 and all(len(r) == 3 and int(r[2]) > 0 for r in chinese)


def test_every_question_points_at_an_existing_note_and_is_not_its_title():
    notes = shared_data("notes")
    questions = eval_rag.read_questions(eval_rag.QUESTIONS, notes) + eval_rag.read_questions(HARD, notes)
    for q in questions:
        title = re.sub(r"^#\s+", "", Path(q.path).read_text(encoding="utf-8").splitlines()[0]).strip().lower()
        assert q.text.lower() != title and title not in q.text.lower(), q.text


def test_chinese_questions_point_at_lines_of_the_note():
    notes = shared_data("notes-zh")
    for q in eval_rag.read_questions(ZH, notes):
        lines = Path(q.path).read_text(encoding="utf-8").splitlines()
        assert q.line <= len(lines) and lines[q.line - 1].strip(), (q.text, q.line)


def test_read_questions_refuses_a_missing_note(tmp_path):
    (tmp_path / "q.tsv").write_text("# comment\nnope.md\tsome question here\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"q.tsv:2: no note"):
        eval_rag.read_questions(tmp_path / "q.tsv", tmp_path)


def test_ranking_and_metrics():
    hit = eval_rag._Hit
    results = [hit("a.md", 1, 5), hit("a.md", 6, 9), hit("b.md", 1, 3), hit("c.md", 4, 8)]
    by_file = eval_rag.ranking(results, by_chunk=False)
    assert [p for p, _, _ in by_file] == ["a.md", "b.md", "c.md"]  # a file counts once, at its best chunk
    assert eval_rag.rank_of(eval_rag.Question("c.md", "q"), by_file) == 3
    by_chunk = eval_rag.ranking(results, by_chunk=True)
    assert eval_rag.rank_of(eval_rag.Question("a.md", "q", line=7), by_chunk) == 2  # the chunk covering line 7
    assert eval_rag.rank_of(eval_rag.Question("d.md", "q"), by_file) is None
    m = eval_rag.metrics([1, 3, None, None])
    assert m["recall@10"] == 0.5 and m["mrr@10"] == round((1 + 1 / 3) / 4, 4)
    assert m["ndcg@10"] == round((1 + 1 / math.log2(4)) / 4, 4)
