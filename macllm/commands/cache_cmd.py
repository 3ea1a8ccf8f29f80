"""`macllm cache list|clear|limit`: the prompt cache on disk ($MACLLM_HOME/cache/)."""

from __future__ import annotations

import json
import time


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="the prompt cache on disk: list, clear, or set its size cap")
    csub = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    lp = csub.add_parser("list", help="saved prompt caches: model, tokens, KV bits, adapters, size, last used")
    lp.add_argument("--json", action="store_true", help="print JSON")
    lp.set_defaults(run=run_list)
    cp = csub.add_parser("clear", help="remove every saved prompt cache")
    cp.set_defaults(run=run_clear)
    mp = csub.add_parser("limit", help="show the size cap, or set it (MiB; 0 turns the cache off)")
    mp.add_argument("mb", nargs="?", help="the new cap in MiB")
    mp.set_defaults(run=run_limit)
    p.set_defaults(run=run_list, json=False)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _ago(ts: float) -> str:
    seconds = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return "just now"


def _row(entry) -> dict:
    row = {"file": entry.path.name, "size_bytes": entry.size, "last_used": entry.last_used}
    if entry.header is None:
        return row | {"problem": entry.problem}
    key = entry.header.key
    return row | {"model": entry.header.model, "tokens": len(entry.header.tokens), "kv_bits": key.get("kv_bits"),
                  "adapters": {a[0]: a[1] for a in key.get("adapters", []) if isinstance(a, list) and a}}


def run_list(args) -> int:
    from macllm.prompt_cache import PromptCache  # start-up time: see commands/__init__.py
    from macllm.prompt_cache.limit import resolve_mb

    store = PromptCache()
    rows = [_row(e) for e in store.entries()]
    cap = resolve_mb()
    if args.json:
        print(json.dumps({"folder": str(store.folder), "limit_mb": cap, "files": rows}))
        return 0
    total = sum(r["size_bytes"] for r in rows)
    state = "off" if cap == 0 else f"cap {cap} MiB"
    if not rows:
        print(f"No saved prompt caches in {store.folder} ({state}).")
        return 0
    header = ("MODEL", "TOKENS", "KV", "ADAPTERS", "SIZE", "LAST USED", "FILE")
    table = [header]
    for r in rows:
        if "problem" in r:
            table.append(("damaged", "-", "-", "-", _mib(r["size_bytes"]), _ago(r["last_used"]),
                          f"{r['file']} ({r['problem']})"))
            continue
        adapters = ", ".join(f"{k} ×{v:g}" for k, v in r["adapters"].items()) or "-"
        table.append((r["model"], str(r["tokens"]), str(r["kv_bits"] or "full"), adapters, _mib(r["size_bytes"]),
                      _ago(r["last_used"]), r["file"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{_files(len(rows))}, {_mib(total)} in {store.folder} ({state}; least recently used go first)")
    return 0


def run_clear(args) -> int:
    from macllm.prompt_cache import PromptCache  # start-up time: see commands/__init__.py

    store = PromptCache()
    count, size = store.clear()
    print(f"Removed {count} prompt cache {_files(count).split(' ', 1)[1]} ({_mib(size)}) from {store.folder}")
    return 0


def run_limit(args) -> int:
    from macllm.prompt_cache import PromptCache  # start-up time: see commands/__init__.py
    from macllm.prompt_cache.limit import ENV, check_mb, resolve_mb, save_mb

    if args.mb is None:
        print(f"{resolve_mb()} MiB" + (" (off)" if resolve_mb() == 0 else ""))
        return 0
    mb = check_mb(args.mb, "the cap")
    save_mb(mb)
    removed = PromptCache(limit_bytes=mb * 2**20).evict() if mb else []
    print(f"Prompt cache cap: {mb} MiB" + (" (off)" if mb == 0 else "") +
          (f"; evicted {len(removed)} least recently used files" if removed else ""))
    if resolve_mb() != mb:
        print(f"macllm: note: ${ENV} is set and overrides this cap in this shell", flush=True)
    return 0
