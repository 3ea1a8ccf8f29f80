"""`macllm perplexity`: how well a model predicts a text (lower is better); measures quantization cost."""

from __future__ import annotations

import json

from macllm.commands.options import add_model_option, read_text_arg


def add_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a model on a text file")
    add_model_option(p)
    p.add_argument("--file", "-f", required=True, help="the text file to score")
    p.add_argument("--adapter", help="a LoRA adapter folder to apply first")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the file")
    p.add_argument("--context", type=int, default=1024, help="tokens per window (default 1024)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: half the context)")
    p.add_argument("--json", action="store_true", help='print {"tokens", "nll", "ppl"}')
    p.set_defaults(run=run)


def run(args) -> int:
    from macllm.errors import MacllmError
    from macllm.loader import load_model
    from macllm.quant.perplexity import perplexity

    text = read_text_arg(None, args.file, what="text")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise MacllmError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    if args.context < 2:
        raise MacllmError(f"--context must be at least 2, got {args.context}")
    loaded = load_model(args.model, keep_quantized=args.keep_quantized, progress=not args.json)
    if args.adapter:
        apply_adapter(loaded, args.adapter)
    tokens = loaded.tokenizer.encode(text)
    if args.max_tokens:
        tokens = tokens[: args.max_tokens]
    result = perplexity(loaded.model, tokens, context=args.context, stride=args.stride, kv_bits=args.kv_bits)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"perplexity {result.ppl:.4f} (mean NLL {result.nll:.4f} nats over {result.tokens} tokens)")
    return 0


def apply_adapter(loaded, folder: str) -> None:
    from pathlib import Path

    from macllm.lora import AdapterManager
    from macllm.lora.formats import read_adapter

    adapter = read_adapter(Path(folder))
    manager = AdapterManager(loaded.model, loaded.config)
    manager.load(adapter)
    manager.activate({adapter.name: 1.0})
