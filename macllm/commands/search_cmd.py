"""`macllm search "query"`: the best-matching chunks of your notes (hybrid, BM25 or dense)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from macllm.commands.index_cmd import add_index_option
from macllm.errors import MacllmError


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search your indexed notes")
    p.add_argument("query", nargs="?", help="what to look for")
    p.add_argument("--queries", metavar="FILE", help="one query per line; prints one JSON line per query")
    add_search_options(p)
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(run=run)


def add_search_options(p, k: int = 10) -> None:
    add_index_option(p)
    p.add_argument("-k", type=int, default=k, help=f"how many chunks (default {k})")
    p.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid",
                   help="keywords (bm25), meaning (dense) or both fused (hybrid, default)")
    p.add_argument("--path", default=None, metavar="GLOB", help="only files whose path matches (glob or substring)")


def run(args) -> int:
    from macllm.rag.session import open_retriever
    from macllm.rag.store import damaged, index_path

    if (args.query is None) == (args.queries is None):
        raise MacllmError("give a query or --queries FILE (one of them)")
    queries = _read_queries(args.queries) if args.queries else [args.query]
    retriever = open_retriever(args.index, progress=not (args.json or args.queries))
    try:
        for query in queries:
            results = retriever.search(query, k=args.k, mode=args.mode, path=args.path)
            if args.queries:
                print(json.dumps({"query": query, "results": [r.as_json() for r in results]}, ensure_ascii=False))
            elif args.json:
                print(json.dumps([r.as_json() for r in results], ensure_ascii=False, indent=1))
            else:
                _print_results(results)
    except sqlite3.DatabaseError as e:
        raise damaged(index_path(args.index), e) from None
    return 0


def _read_queries(file: str) -> list[str]:
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MacllmError(f"cannot read queries from {file}: {e}") from None
    return [line.strip() for line in lines if line.strip()]


def _print_results(results) -> None:
    if not results:
        print("No matching notes.")
    for rank, r in enumerate(results, start=1):
        heading = f"  {r.heading}" if r.heading else ""
        print(f"{rank:2}. {r.location}{heading}  ({r.score:.3f})")
        snippet = " ".join(r.text.split())
        print(f"    {snippet[:200]}{'…' if len(snippet) > 200 else ''}")
