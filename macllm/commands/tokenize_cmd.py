"""`macllm tokenize`: how a text splits into tokens, and what it costs."""

from __future__ import annotations

import json

from macllm.commands.options import read_text_arg


def add_parser(sub) -> None:
    p = sub.add_parser("tokenize", help="show how text splits into tokens")
    p.add_argument("--model", "-m", default=None, help="model whose tokenizer to use (default: the default model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", "-t", help="the text")
    src.add_argument("--file", help="read the text from a file")
    p.add_argument("--json", action="store_true", help='print {"ids": [...], "pieces": [...], "count": N}')
    p.set_defaults(run=run)


def run(args) -> int:
    from macllm.hub import resolve_model
    from macllm.hub.catalog import DEFAULT_MODEL
    from macllm.loader import read_tokenizer

    text = read_text_arg(args.text, args.file, what="text")
    tok = read_tokenizer(resolve_model(args.model or DEFAULT_MODEL, progress=not args.json))
    ids = tok.encode(text)
    pieces = [tok.piece(i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces, "count": len(ids)}, ensure_ascii=False))
        return 0
    print(" | ".join(repr(p)[1:-1] for p in pieces))
    print(" ".join(str(i) for i in ids))
    per_char = len(ids) / max(len(text), 1)
    print(f"{len(ids)} tokens for {len(text)} characters ({per_char:.2f} tokens per character)")
    return 0
