"""`macllm search "query"`: the best-matching chunks of your notes (hybrid, BM25 or dense)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Callable

from macllm.commands.index_cmd import add_index_option
from macllm.errors import MacllmError


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search your indexed notes")
    p.add_argument("query", nargs="?", help="what to look for")
    p.add_argument("--queries", metavar="FILE",
                   help="one query per line (blank lines are skipped); prints one JSON line per query")
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
    from macllm.rag.retrieve import check_query
    from macllm.rag.session import open_retriever
    from macllm.rag.store import damaged, index_path

    if (args.query is None) == (args.queries is None):
        raise MacllmError("give a query or --queries FILE (one of them)")
    if args.queries:
        queries = _read_queries(args.queries, check_query)
    else:
        check_query(args.query)  # before the embedder loads
        queries = [args.query]
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


def _read_queries(file: str, check_query: Callable[[str, str], None]) -> list[str]:
    """The file's queries, one a line. Blank lines are skipped (spacing); a line of only punctuation is refused
    with its number, before any search runs, like a single query."""
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MacllmError(f"cannot read queries from {file}: {e}") from None
    queries = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            check_query(line.strip(), f"{file} line {number}: ")
            queries.append(line.strip())
    if not queries:
        raise MacllmError(f"no queries in {file}: write one query per line")
    return queries


def _print_results(results) -> None:
    if not results:
        print("No matching notes.")
    for rank, r in enumerate(results, start=1):
        heading = f"  {r.heading}" if r.heading else ""
        print(f"{rank:2}. {r.location}{heading}  ({r.score:.3f})")
        snippet = " ".join(r.text.split())
        print(f"    {snippet[:200]}{'…' if len(snippet) > 200 else ''}")
