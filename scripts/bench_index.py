"""Indexing speed (not a test): our embedder against sentence-transformers on the same chunks, then
`index_notes` end to end on the notes and on a bigger folder made from them. Prints JSON.

    .venv/bin/python scripts/bench_index.py [--notes ../shared/data/notes] [--chunks 600] [--rounds 3]
                                            [--copies 4] [--skip-st]

- Embedding: the notes are chunked as the indexer does; `--chunks` of them (spread over the corpus) are
  embedded by ours and by sentence-transformers (PyTorch CPU, its defaults: batch 32, all cores),
  alternating, `--rounds` times; chunks/s is the median round. Cosine of each of our vectors to its
  sentence-transformers vector: the minimum is reported (goal >= 0.9999).
- Index: a fresh index of the notes, then one note edited and indexed again, then a folder of
  `--copies` copies of the notes, each copy's titles renamed so that every chunk is new (the copies are
  made in a temporary folder and deleted).
The machine is shared: the load average is printed with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
    parser.add_argument("--chunks", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--skip-st", action="store_true", help="leave out sentence-transformers")
    parser.add_argument("--skip-index", action="store_true", help="only the embedding comparison")
    args = parser.parse_args()

    from macllm.rag.embedder import Embedder

    embedder = Embedder.load("minilm-l6", progress=True)
    notes = Path(args.notes).expanduser()
    report: dict = {"machine": f"{os.cpu_count()} cpus", "embedder": embedder.source,
                    "cpu_path": "numpy (models/bert_cpu.py)" if embedder.cpu is not None else "mlx"}
    texts = sample_chunks(notes, embedder, args.chunks)
    tokens = sum(embedder.count_tokens(texts))
    report["embedding"] = {"chunks": len(texts), "tokens": tokens, "mean_tokens": round(tokens / len(texts), 1),
                           **compare(embedder, texts, args.rounds, not args.skip_st)}
    if not args.skip_index:
        with tempfile.TemporaryDirectory(prefix="macllm-bench-index-") as tmp:
            report["index"] = bench_index(embedder, notes, Path(tmp), args.copies)
    print(json.dumps(report, indent=1))


def sample_chunks(notes: Path, embedder, n: int) -> list[str]:
    from macllm.rag.chunking import chunk_file

    chunks = []
    for path in sorted(notes.rglob("*.md")):
        chunks += chunk_file(str(path), path.read_text(encoding="utf-8", errors="replace"),
                             embedder.count_tokens, embedder.content_limit)
    step = max(1, len(chunks) // n)
    return [c.embed_text for c in chunks[::step][:n]]


def compare(embedder, texts: list[str], rounds: int, with_st: bool) -> dict:
    import numpy as np

    st = None
    if with_st:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(embedder.folder), device="cpu")
        st.encode(texts[:8])  # warm-up
    embedder.embed(texts[:8])
    ours_rates, st_rates, loads = [], [], []
    ours = theirs = None
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        started = time.perf_counter()
        ours = embedder.embed(texts)
        ours_rates.append(len(texts) / (time.perf_counter() - started))
        if st is not None:
            started = time.perf_counter()
            theirs = st.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            st_rates.append(len(texts) / (time.perf_counter() - started))
    result: dict = {"ours_chunks_per_s": [round(r, 1) for r in ours_rates],
                    "ours_median": round(statistics.median(ours_rates), 1), "load_avg": loads}
    if st is not None:
        import torch

        cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
        result.update({
            "st_chunks_per_s": [round(r, 1) for r in st_rates], "st_median": round(statistics.median(st_rates), 1),
            "ratio_per_round": [round(a / b, 2) for a, b in zip(ours_rates, st_rates, strict=True)],
            "ratio_of_medians": round(statistics.median(ours_rates) / statistics.median(st_rates), 2),
            "min_cosine": float(cosines.min()), "torch": torch.__version__, "torch_threads": torch.get_num_threads()})
    return result


def bench_index(embedder, notes: Path, tmp: Path, copies: int) -> dict:
    from macllm.rag.indexer import index_notes
    from macllm.rag.store import Store

    out: dict = {}
    folder = tmp / "notes"
    write_copies(notes, folder, 1)
    load = os.getloadavg()[0]
    summary = index_notes(Store(tmp / "one.sqlite"), embedder, [folder], progress=True)
    out["notes"] = {"files": summary.total_files, "chunks": summary.total_chunks, "seconds": round(summary.seconds, 1),
                    "chunks_per_s": round(summary.chunks_embedded / summary.seconds, 1), "load_avg": load,
                    "load_avg_after": os.getloadavg()[0]}
    note = sorted(folder.rglob("*.md"))[0]
    note.write_text(note.read_text(encoding="utf-8") + "\n\n## Added later\n\nOne more paragraph.\n", encoding="utf-8")
    edit = index_notes(Store(tmp / "one.sqlite"), embedder, [folder])
    out["one_edit"] = {"seconds": round(edit.seconds, 3), "chunks_embedded": edit.chunks_embedded}
    if copies > 1:
        big = tmp / "copies"
        write_copies(notes, big, copies)
        load = os.getloadavg()[0]
        summary = index_notes(Store(tmp / "copies.sqlite"), embedder, [big], progress=True)
        out["copies"] = {"files": summary.total_files, "chunks": summary.total_chunks,
                         "chunks_embedded": summary.chunks_embedded, "seconds": round(summary.seconds, 1),
                         "chunks_per_s": round(summary.chunks_embedded / summary.seconds, 1), "load_avg": load}
    return out


def write_copies(notes: Path, dest: Path, copies: int) -> None:
    """`copies` renamed copies of every note; each copy's headings get the copy's number, so every chunk
    (embedded with its heading path in front) is new to the index."""
    for path in sorted(notes.rglob("*.md")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for copy in range(copies):
            target = dest / f"copy{copy}" / path.relative_to(notes)
            target.parent.mkdir(parents=True, exist_ok=True)
            renamed = re.sub(r"^(#{1,6} )", rf"\g<1>({copy}) ", text, flags=re.MULTILINE) if copy else text
            target.write_text(renamed, encoding="utf-8")


if __name__ == "__main__":
    main()
