"""Options shared by the commands that generate text."""

from __future__ import annotations

import argparse
from pathlib import Path

from macllm.catalog import DEFAULT_MODEL
from macllm.errors import MacllmError
from macllm.generate import GenerationParams


def add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"a .gguf file, a model folder, a catalog name or a Hugging Face repo id "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--keep-quantized", action="store_true",
                   help="on CPU, compute with the stored quantized weights instead of float32 (slower, less memory)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (1.0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def generation_params(args) -> GenerationParams:
    if args.max_tokens < 1:
        raise MacllmError("--max-tokens must be at least 1")
    if args.temp < 0 or not 0 < args.top_p <= 1 or not 0 <= args.min_p < 1 or args.top_k < 0:
        raise MacllmError("sampling options out of range (temp >= 0, 0 < top-p <= 1, 0 <= min-p < 1, top-k >= 0)")
    if args.repeat_penalty <= 0:
        raise MacllmError("--repeat-penalty must be positive")
    return GenerationParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                            repetition_penalty=args.repeat_penalty, seed=args.seed,
                            max_tokens=args.max_tokens, stop_strings=tuple(args.stop))


def read_text_arg(text: str | None, file: str | None, what: str = "prompt") -> str:
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise MacllmError(f"{what} file not found: {file}")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MacllmError(f"{what} file {file} is not UTF-8 text") from None
    if text is None:
        raise MacllmError(f"give a {what} with --{what} or --{what}-file")
    return text
