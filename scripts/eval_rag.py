"""Retrieval quality on the sample notes: nDCG@10, recall@10 and MRR@10 for bm25, dense and hybrid search.

The default eval is our hand-written questions (scripts/data/rag_questions.tsv: a note path and a question
whose answer is in that note; results are collapsed to files). `--questions` takes another such file; a
third column (a line number) makes the unit a chunk: a result counts when it is that file and its lines
cover that line (scripts/data/rag_questions_zh.tsv, over ../shared/data/notes-zh). `--titles` runs the older,
easier eval: each note's title is the query and is removed from the indexed copy. docs/rag.md records the
figures.

    .venv/bin/python scripts/eval_rag.py [--notes DIR] [--questions FILE | --titles] [--embedder M]
                                         [--index PATH (kept and reused)] [--sweep]
                                         [--rerank MODEL [--limit N]] [--distractors N] [--also DIR ...]

`--sweep` scores hybrid search over a grid of BM25 heading weights, RRF constants and dense weights (from
lists fetched once per setting), to tune macllm/rag/retrieve.py and store.py's constants. `--rerank MODEL`
scores hybrid search with and without the chat model reranking its top 20 (macllm/rag/rerank.py) and
times both; `--limit N` takes the first N questions (reranking costs seconds per question on a CPU).
`--distractors N` indexes only the answer notes and the first N other notes (in path order) instead of the
whole folder: a smaller, still reproducible corpus when embedding all of it would take too long.
`--also DIR` indexes another folder beside the notes (repeatable): e.g. the English notes as distractors for
the Chinese questions, so that one index of both folders serves all three question sets.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import macllm  # noqa: F401  (loads OpenBLAS before MLX)

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "scripts" / "data" / "rag_questions.tsv"
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$")
DEPTH = 10


@dataclass(frozen=True)
class Question:
    path: str  # absolute path of the note as indexed
    text: str
    line: int = 0  # 0: the whole file is the answer; else the chunk covering this 1-based line


def read_questions(file: Path, notes: Path) -> list[Question]:
    """`note path <TAB> question [<TAB> line]` rows; '#' lines are comments. Every note must exist."""
    questions: list[Question] = []
    for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        fields = raw.split("\t")
        if len(fields) not in (2, 3) or not fields[1].strip():
            raise SystemExit(f"{file}:{number}: expected `note<TAB>question[<TAB>line]`")
        note = notes / fields[0]
        if not note.is_file():
            raise SystemExit(f"{file}:{number}: no note {note}")
        questions.append(Question(str(note), fields[1].strip(), int(fields[2]) if len(fields) == 3 else 0))
    return questions


def strip_titles(notes: Path, out: Path) -> list[Question]:
    """Copy each Markdown note without its first `# Title` line; the titles become the questions."""
    questions: list[Question] = []
    for path in sorted(notes.rglob("*.md")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines[:10]):
            match = _TITLE.match(line)
            if match:
                target = out / path.relative_to(notes)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("\n".join(lines[:i] + [""] + lines[i + 1:]), encoding="utf-8")
                questions.append(Question(str(target), match.group(1)))
                break
    return questions


def ranking(results, by_chunk: bool) -> list[tuple[str, int, int]]:
    """Hits -> (path, first line, last line), first DEPTH; by file (best chunk first) unless `by_chunk`."""
    ranked: list[tuple[str, int, int]] = []
    for r in results:
        if by_chunk or all(r.path != p for p, _, _ in ranked):
            ranked.append((r.path, r.line_start, r.line_end))
        if len(ranked) == DEPTH:
            break
    return ranked


def rank_of(question: Question, ranked: list[tuple[str, int, int]]) -> int | None:
    for rank, (path, start, end) in enumerate(ranked, start=1):
        if path == question.path and (not question.line or start <= question.line <= end):
            return rank
    return None


def metrics(ranks: list[int | None]) -> dict:
    n = len(ranks)
    found = [r for r in ranks if r is not None]
    return {"ndcg@10": round(sum(1 / math.log2(r + 1) for r in found) / n, 4),
            "recall@10": round(len(found) / n, 4), "mrr@10": round(sum(1 / r for r in found) / n, 4)}


def sweep(retriever, questions: list[Question]) -> list[dict]:
    """Hybrid nDCG@10 over a grid: BM25 heading weight x RRF k x dense weight (bm25 weight 1)."""
    from macllm.rag.retrieve import CANDIDATES, rrf

    by_chunk = any(q.line for q in questions)
    store = retriever.store
    dense = [retriever.dense(q.text, CANDIDATES) for q in questions]
    located: dict[int, tuple[str, int, int]] = {}

    def ranks(lists: list[list[tuple[int, float]]]) -> list[int | None]:
        missing = {i for hits in lists for i, _ in hits if i not in located}
        for i, row in store.chunks(sorted(missing)).items():
            located[i] = (row.path, row.line_start, row.line_end)
        out = []
        for q, hits in zip(questions, lists, strict=True):
            rows = [_Hit(*located[i]) for i, _ in hits if i in located]
            out.append(rank_of(q, ranking(rows, by_chunk)))
        return out

    table = [{"mode": "dense", **metrics(ranks(dense))}]
    for heading in (1.0, 2.0, 3.0, 5.0):
        bm25 = [store.bm25(q.text, CANDIDATES, weights=(heading, 1.0, 1.0)) for q in questions]
        table.append({"mode": "bm25", "heading": heading, **metrics(ranks(bm25))})
        for k in (10, 30, 60, 100):
            for dense_weight in (0.5, 0.75, 1.0, 1.5, 2.0):
                fused = [rrf([b, d], k=k, weights=(1.0, dense_weight)) for b, d in zip(bm25, dense, strict=True)]
                table.append({"mode": "hybrid", "heading": heading, "rrf_k": k, "dense_weight": dense_weight,
                              **metrics(ranks(fused))})
    return table


@dataclass(frozen=True)
class _Hit:
    path: str
    line_start: int
    line_end: int


def score(retriever, questions: list[Question], mode: str, search) -> dict:
    by_chunk = any(q.line for q in questions)
    seconds: list[float] = []
    ranks: list[int | None] = []
    for q in questions:
        started = time.perf_counter()
        results = search(q.text, mode)
        seconds.append(time.perf_counter() - started)
        ranks.append(rank_of(q, ranking(results, by_chunk)))
    return {**metrics(ranks), "query_ms_p50": round(statistics.median(seconds) * 1000, 1),
            "missed": [q.text for q, r in zip(questions, ranks, strict=True) if r is None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", default=str(REPO.parent / "shared" / "data" / "notes"))
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--questions", default=str(QUESTIONS), help="TSV of note path, question [, line]")
    which.add_argument("--titles", action="store_true", help="the older eval: titles as queries")
    parser.add_argument("--embedder", default=None, help="catalog name, folder or repo id (default minilm-l6)")
    parser.add_argument("--index", default=None, help="index file to build or update and keep (default: temp)")
    parser.add_argument("--modes", default="bm25,dense,hybrid")
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="tune: hybrid over a grid of weights (see above)")
    parser.add_argument("--rerank", default=None, metavar="MODEL", help="also rerank hybrid's top 20 with MODEL")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions")
    parser.add_argument("--chunk-tokens", type=int, default=0,
                        help="chunk budget in embedder tokens (default: macllm.rag.embedder.CHUNK_TOKENS)")
    parser.add_argument("--distractors", type=int, default=-1,
                        help="index the answer notes and only the first N other notes (default: all notes)")
    parser.add_argument("--also", action="append", default=[], metavar="DIR",
                        help="index this folder too (distractors only; repeatable)")
    args = parser.parse_args()

    from macllm.rag import embedder as embedder_module
    from macllm.rag.embedder import Embedder
    from macllm.rag.indexer import index_notes
    from macllm.rag.retrieve import Retriever
    from macllm.rag.store import Store

    if args.chunk_tokens:
        embedder_module.CHUNK_TOKENS = args.chunk_tokens  # content_limit reads it at each use
    embedder = Embedder.load(args.embedder)
    work = Path(tempfile.mkdtemp(prefix="macllm-eval-"))
    try:
        notes = Path(args.notes).resolve()
        if args.titles:
            questions = strip_titles(notes, work / "notes")
            notes = work / "notes"
        else:
            questions = read_questions(Path(args.questions), notes)
        if args.limit:
            questions = questions[:args.limit]
        store = Store(Path(args.index) if args.index else work / "eval.sqlite")
        started = time.perf_counter()
        corpus: list[Path] = [notes]
        if args.distractors >= 0:
            answers = sorted({Path(q.path) for q in questions})
            others = [p for p in sorted(notes.rglob("*.md")) if p not in set(answers)][:args.distractors]
            corpus = answers + others
            keep = {str(p) for p in corpus}
            for stale in store.paths_under(str(notes)):  # a reused index may hold more of the folder
                if stale not in keep:
                    store.remove_file(stale)
        corpus += [Path(extra).resolve() for extra in args.also]
        summary = index_notes(store, embedder, corpus, progress=True)
        from macllm.rag.retrieve import FUSION_WEIGHTS

        report: dict = {"embedder": embedder.source, "fusion_weights": FUSION_WEIGHTS,
                        "chunk_tokens": embedder_module.CHUNK_TOKENS,
                        "questions": len(questions), "files": summary.total_files,
                        "chunks": summary.total_chunks, "chunks_embedded": summary.chunks_embedded,
                        "index_seconds": round(time.perf_counter() - started, 1)}
        retriever = Retriever(store, embedder)

        def search(text: str, mode: str):
            return retriever.search(text, k=50, mode=mode)

        if args.rerank:
            from macllm.loader import load_model
            from macllm.rag.rerank import rerank

            loaded = load_model(args.rerank, progress=False)
            report["rerank_model"] = args.rerank
            report["hybrid"] = score(retriever, questions, "hybrid", search)
            report["hybrid+rerank"] = score(
                retriever, questions, "hybrid", lambda text, mode: rerank(loaded, text, search(text, mode)))
            print(json.dumps(report, indent=1, ensure_ascii=False))
            return
        if args.sweep:
            table = sweep(retriever, questions)
            best = sorted((r for r in table if r["mode"] == "hybrid"), key=lambda r: -r["ndcg@10"])
            for row in [r for r in table if r["mode"] != "hybrid"] + best[:12]:
                print(json.dumps(row))
            default = next(r for r in best if r["heading"] == 2.0 and r["rrf_k"] == 60 and r["dense_weight"] == 1.0)
            print("today's settings:", json.dumps(default))
            return
        for mode in args.modes.split(","):
            report[mode] = score(retriever, questions, mode, search)
            if not args.show_misses:
                report[mode]["missed"] = len(report[mode]["missed"])
        print(json.dumps(report, indent=1, ensure_ascii=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
