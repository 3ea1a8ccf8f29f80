"""`macllm models` and `macllm pull`: the catalog and what is on disk."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list catalog and local models")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_models)
    p = sub.add_parser("pull", help="download a catalog model into the model cache")
    p.add_argument("name", help="catalog name (see `macllm models`)")
    p.set_defaults(run=run_pull)


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _status(row: dict) -> str:
    if row.get("source") == "hf":
        return "in the Hugging Face cache"  # its name is the repo id `--model` takes
    return "downloaded" if row.get("pulled") else "not downloaded (macllm pull)"


def run_models(args) -> int:
    from macllm.hub import local_models

    rows = local_models()
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    header = ("NAME", "ARCH", "IMPL", "PARAMS", "QUANT", "SIZE", "STATUS")
    table = [header] + [(r["name"], r.get("architecture") or "?", r.get("implementation") or "?",
                         r.get("params") or "?",
                         r.get("quantization") or "?", _size(r.get("size_bytes")), _status(r))
                        for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_pull(args) -> int:
    from macllm.hub import pull

    path = pull(args.name, progress=True)
    print(path)
    return 0
