"""Retrieval quality on the sample notes: each note's title is the query, with the title removed from the
note, so the note must be found by its content. nDCG@10 (one relevant file per query), recall@10 and MRR
for bm25, dense and hybrid. docs/rag.md records the figures.

    .venv/bin/python scripts/eval_rag.py [--notes ../shared/data/notes] [--embedder M]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path

import macllm  # noqa: F401  (loads OpenBLAS before MLX)

REPO = Path(__file__).resolve().parents[1]
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$")


def strip_titles(notes: Path, out: Path) -> dict[str, str]:
    """Copy each Markdown note without its first `# Title` line; {copied path: title}."""
    queries: dict[str, str] = {}
    for path in sorted(notes.rglob("*.md")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines[:10]):
            match = _TITLE.match(line)
            if match:
                target = out / path.relative_to(notes)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("\n".join(lines[:i] + [""] + lines[i + 1:]), encoding="utf-8")
                queries[str(target)] = match.group(1)
                break
    return queries


def file_ranking(results, depth: int = 10) -> list[str]:
    """Chunk hits -> distinct files in order of their best chunk, first `depth`."""
    files: list[str] = []
    for r in results:
        if r.path not in files:
            files.append(r.path)
        if len(files) == depth:
            break
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", default=str(REPO.parent / "shared" / "data" / "notes"))
    parser.add_argument("--embedder", default=None)
    args = parser.parse_args()

    from macllm.rag.embedder import Embedder
    from macllm.rag.indexer import index_notes
    from macllm.rag.retrieve import Retriever
    from macllm.rag.store import Store

    embedder = Embedder.load(args.embedder)
    work = Path(tempfile.mkdtemp(prefix="macllm-eval-"))
    try:
        notes = work / "notes"
        queries = strip_titles(Path(args.notes), notes)
        db = work / "eval.sqlite"
        started = time.perf_counter()
        store = Store(db)
        summary = index_notes(store, embedder, [notes], progress=True)
        index_seconds = time.perf_counter() - started
        retriever = Retriever(store, embedder)
        report = {"queries": len(queries), "chunks": summary.total_chunks, "index_seconds": round(index_seconds, 1)}
        for mode in ("bm25", "dense", "hybrid"):
            ndcg = recall = mrr = 0.0
            for path, title in queries.items():
                ranked = file_ranking(retriever.search(title, k=50, mode=mode))
                if path in ranked:
                    rank = ranked.index(path) + 1
                    ndcg += 1 / math.log2(rank + 1)
                    recall += 1
                    mrr += 1 / rank
            n = len(queries)
            report[mode] = {"ndcg@10": round(ndcg / n, 4), "recall@10": round(recall / n, 4),
                            "mrr@10": round(mrr / n, 4)}
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
