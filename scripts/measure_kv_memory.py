"""Measure the KV cache's memory at a given context length, for full-precision, 8-bit and 4-bit caches.

For each --kv-bits it builds a fresh cache (macllm.cache.make_cache), prefills the first --tokens
tokens of real text (../shared/data/notes/**/*.md, concatenated in sorted order) in chunks of 256,
and sums the `.nbytes` of every array the cache then holds (macllm.cache.memory): the allocated buffers
(they grow in steps of 256 positions) and the filled part. MLX's own counters are shown beside them:
active = allocator's live bytes after the prefill minus before (the cache), peak = the highest during
the prefill minus before (cache + activations + logits). Nothing is computed from a formula.

    MACLLM_HOME=~/.cache/macllm-test .venv/bin/python scripts/measure_kv_memory.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import macllm  # noqa: F401  (loads OpenBLAS before MLX)
from macllm.cache.memory import measure
from macllm.hub.catalog import DEFAULT_MODEL
from macllm.loader import load_model

NOTES = Path(__file__).resolve().parents[2] / "shared" / "data" / "notes"
MB = 1 << 20


def notes_text(folder: Path = NOTES) -> str:
    files = sorted(folder.rglob("*.md"))
    if not files:
        sys.exit(f"no .md files under {folder}")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def bits_arg(text: str) -> list[int | None]:
    return [None if b.strip().lower() in {"none", "full", "0"} else int(b) for b in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"path or catalog name (default {DEFAULT_MODEL})")
    parser.add_argument("--tokens", type=int, default=4096, help="context length to prefill (default 4096)")
    parser.add_argument("--kv-bits", type=bits_arg, default=[None, 8, 4], help="comma list (default none,8,4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    loaded = load_model(args.model, progress=not args.json)
    tokens = loaded.tokenizer.encode(notes_text())[: args.tokens]
    if len(tokens) < args.tokens:
        sys.exit(f"the notes give only {len(tokens)} tokens, fewer than --tokens {args.tokens}")
    rows = [measure(loaded.model, tokens, bits) for bits in args.kv_bits]
    full = next((r for r in rows if r.kv_bits is None), None)

    if args.json:
        print(json.dumps({"model": args.model, "compute": loaded.info.compute, "tokens": len(tokens),
                          "rows": [r.as_dict() for r in rows]}))
        return 0
    base = f"vs {'+'.join(full.dtypes)}" if full else ""
    print(f"KV cache of {args.model} ({loaded.info.compute}) after prefilling {len(tokens)} tokens")
    print(f"{'kv_bits':<8} {'arrays':<16} {'allocated MB':>12} {'filled MB':>10} {'B/token':>8} "
          f"{base:>12} {'MLX active MB':>14} {'MLX peak MB':>12}")
    for r in rows:
        ratio = f"{r.filled_bytes / full.filled_bytes:.3f}" if full else ""
        print(f"{str(r.kv_bits or 'none'):<8} {'+'.join(r.dtypes):<16} {r.allocated_bytes / MB:>12.2f} "
              f"{r.filled_bytes / MB:>10.2f} {r.filled_bytes // r.tokens:>8} {ratio:>12} "
              f"{r.active_bytes / MB:>14.2f} {r.peak_bytes / MB:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
