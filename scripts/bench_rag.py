"""Notes-search speed (not a test): index the sample notes end to end, query a synthetic 100k-chunk store,
re-index after editing one note. Prints a JSON summary; docs/benchmarks.md records the figures.

    .venv/bin/python scripts/bench_rag.py [--notes ../shared/data/notes] [--chunks 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import macllm  # noqa: F401  (loads OpenBLAS before MLX)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", default=str(REPO.parent / "shared" / "data" / "notes"))
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embedder", default=None)
    parser.add_argument("--max-files", type=int, default=0, help="index only the first N notes (0: all)")
    args = parser.parse_args()

    from macllm.rag.embedder import Embedder

    embedder = Embedder.load(args.embedder, progress=True)
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_avg_start": os.getloadavg()[0],
              "embedder": embedder.source}
    with tempfile.TemporaryDirectory(prefix="macllm-bench-") as tmp:
        tmp = Path(tmp)
        notes = tmp / "notes"
        copy_notes(Path(args.notes), notes, args.max_files)
        report["index_notes"] = bench_index(embedder, notes, tmp / "notes.sqlite")
        report["reindex_one_edit"] = bench_edit(embedder, notes, tmp / "notes.sqlite")
        report["synthetic"] = bench_queries(embedder, notes, tmp / "synthetic.sqlite", args.chunks, args.queries)
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


def copy_notes(source: Path, dest: Path, limit: int) -> None:
    files = sorted(source.rglob("*.md"))
    for path in files[:limit] if limit else files:
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def bench_index(embedder, notes: Path, db: Path) -> dict:
    from macllm.rag.indexer import index_notes
    from macllm.rag.store import Store

    started = time.perf_counter()
    summary = index_notes(Store(db), embedder, [notes], progress=True)
    seconds = time.perf_counter() - started
    return {"files": summary.total_files, "chunks": summary.total_chunks, "seconds": round(seconds, 1),
            "chunks_per_s": round(summary.total_chunks / seconds, 1), "truncated": summary.truncated}


def bench_edit(embedder, notes: Path, db: Path) -> dict:
    from macllm.rag.indexer import index_notes
    from macllm.rag.store import Store

    store = Store(db)
    note = sorted(notes.rglob("*.md"))[0]
    note.write_text(note.read_text(encoding="utf-8") + "\n\n## Added later\n\nOne more paragraph for the benchmark.\n")
    started = time.perf_counter()
    summary = index_notes(store, embedder, [notes])
    seconds = time.perf_counter() - started
    nothing_started = time.perf_counter()
    index_notes(store, embedder, [notes])
    return {"seconds": round(seconds, 3), "changed": summary.changed, "chunks_embedded": summary.chunks_embedded,
            "unchanged_run_seconds": round(time.perf_counter() - nothing_started, 3)}


def bench_queries(embedder, notes: Path, db: Path, n_chunks: int, n_queries: int) -> dict:
    """A store of n_chunks made of the notes' own words (Zipf-like: sampled from running text) with random
    unit vectors; the query latency covers embedding the query, BM25, the dense product and fusion."""
    import numpy as np

    from macllm.rag.chunking import Chunk
    from macllm.rag.retrieve import Retriever
    from macllm.rag.store import Store

    words = re.findall(r"[A-Za-z]{3,}", " ".join(p.read_text(encoding="utf-8", errors="replace")
                                                 for p in sorted(notes.rglob("*.md"))))
    rng = random.Random(0)
    vectors = np.random.default_rng(0).standard_normal((n_chunks, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = Store(db)
    store.use_embedder(embedder.id, embedder.dim, embedder.source)
    started = time.perf_counter()
    per_file = 10
    for f in range(n_chunks // per_file):
        chunks = []
        for c in range(per_file):
            start = rng.randrange(len(words) - 120)
            text = " ".join(words[start:start + rng.randrange(40, 120)])
            chunks.append(Chunk(text, f"Synthetic {f}", c * 10 + 1, c * 10 + 9))
        blobs = [vectors[f * per_file + i].tobytes() for i in range(per_file)]
        store.replace_file(f"/synthetic/{f // 100}/{f}.md", 0, 0, f"{f:064x}", chunks, blobs, embedder.id)
    build_seconds = time.perf_counter() - started
    retriever = Retriever(store, embedder)
    load_started = time.perf_counter()
    retriever.search("warm up", k=10)
    first_query = time.perf_counter() - load_started
    queries = [" ".join(rng.sample(words, rng.randrange(2, 7))) for _ in range(n_queries)]
    timings = {}
    precomputed = {q: embedder.embed_query(q) for q in queries}
    real_embed_query = embedder.embed_query
    embedder.embed_query = precomputed.__getitem__  # retrieval alone
    for mode in ("hybrid", "bm25", "dense"):
        latencies = []
        for q in queries:
            t = time.perf_counter()
            retriever.search(q, k=10, mode=mode)
            latencies.append((time.perf_counter() - t) * 1000)
        timings[mode] = {"p50_ms": round(float(np.percentile(latencies, 50)), 1),
                         "p95_ms": round(float(np.percentile(latencies, 95)), 1)}
    embedder.embed_query = real_embed_query
    t_all = []
    for q in queries[:50]:  # hybrid including embedding the query
        t = time.perf_counter()
        retriever.search(q, k=10)
        t_all.append((time.perf_counter() - t) * 1000)
    timings["hybrid_with_query_embedding"] = {"p50_ms": round(float(np.percentile(t_all, 50)), 1),
                                              "p95_ms": round(float(np.percentile(t_all, 95)), 1)}
    embed_latencies = []
    for q in queries[:50]:
        t = time.perf_counter()
        embedder.embed_query(q)
        embed_latencies.append((time.perf_counter() - t) * 1000)
    return {"chunks": n_chunks, "build_seconds": round(build_seconds, 1),
            "first_query_incl_matrix_load_s": round(first_query, 2), "queries": n_queries, **timings,
            "query_embedding_p50_ms": round(float(np.percentile(embed_latencies, 50)), 1),
            "db_mb": round(db.stat().st_size / 1e6, 1)}


if __name__ == "__main__":
    main()
