"""Options shared by the commands that generate text."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from macllm.errors import MacllmError
from macllm.hub.catalog import DEFAULT_MODEL
from macllm.lora.weight_bounds import weight_problem

if TYPE_CHECKING:
    from macllm.generation import GenerationParams

MAX_SEED = 2**64 - 1  # MLX's random keys take an unsigned 64-bit seed
MAX_DRAFT_TOKENS = 32  # a check of more guesses costs several decode steps, so nothing is gained


def add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"a .gguf file, a model folder, a catalog name or a Hugging Face repo id "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--keep-quantized", action="store_true",
                   help="on CPU, compute with the stored quantized weights instead of float32 (slower, less memory)")
    p.add_argument("--kv-bits", type=int, choices=(8, 4), default=None,
                   help="store the KV cache quantized (group 64) once the context passes 256 tokens")


def add_prompt_cache_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-cache-mb", type=int, default=None, metavar="MB",
                   help="size cap of the prompt cache on disk in MiB, 0 = off (default: $MACLLM_PROMPT_CACHE_MB, "
                        "else `macllm cache limit`, else 2048)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (1.0 = off)")
    p.add_argument("--seed", type=parse_seed, default=None,
                   help=f"random seed for reproducible sampling (0 to {MAX_SEED})")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def add_speculative_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draft-model", metavar="M",
                   help="speculative decoding: a small model with the same tokenizer guesses tokens, the model "
                        "checks them in one pass (same output, faster), e.g. qwen2.5-coder-0.5b for the 1.5b")
    p.add_argument("--prompt-lookup", action=argparse.BooleanOptionalAction, default=None,
                   help="speculative decoding without a draft: guess by copying from the prompt (on for ask)")
    p.add_argument("--draft-tokens", type=int, default=0, metavar="K",
                   help=f"guesses per round (1 to {MAX_DRAFT_TOKENS}; default 0: adapt to the acceptance rate)")


def add_thinking_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--think", dest="enable_thinking", action=argparse.BooleanOptionalAction, default=None,
                   help="reasoning models (Qwen3): think before answering, or not with --no-think; passed to "
                        "the chat template as enable_thinking (default: the template's own default)")


def parse_seed(text: str, maximum: int = MAX_SEED) -> int:
    """argparse type for --seed: a whole number MLX accepts, else a usage error that says the range."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= maximum:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {maximum}, got {text}")
    return seed


def checked_text(value: str, flag: str) -> str:
    """`value` if it is text the tokenizer can take. Bytes in argv that are not UTF-8 reach Python as
    surrogate escapes; they are refused rather than replaced, since a repaired prompt is another prompt."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        char = ord(value[e.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"character U+{char:04X}"
        raise MacllmError(f"{flag} is not UTF-8 text ({what} at position {e.start}); pass UTF-8 text "
                          f"(check the terminal's encoding, LANG)") from None
    return value


def sampling_problem(args) -> str | None:
    """What is wrong with the sampling options, naming the flag, or None. NaN fails every check."""
    if not args.max_tokens >= 1:
        return f"--max-tokens must be at least 1, got {args.max_tokens}"
    if not 0 <= args.temp < math.inf:
        return f"--temp must be 0 (greedy) or a positive number, got {args.temp}"
    if not 0 < args.top_p <= 1:
        return f"--top-p must be above 0 and at most 1 (1 = off), got {args.top_p}"
    if not 0 <= args.min_p < 1:
        return f"--min-p must be at least 0 and below 1 (0 = off), got {args.min_p}"
    if not args.top_k >= 0:
        return f"--top-k must be 0 (off) or a positive count, got {args.top_k}"
    if not 0 < args.repeat_penalty < math.inf:
        return f"--repeat-penalty must be a positive number (1 = off), got {args.repeat_penalty}"
    draft_tokens = getattr(args, "draft_tokens", 0)
    if not 0 <= draft_tokens <= MAX_DRAFT_TOKENS:
        return f"--draft-tokens must be 0 (adapt) or 1 to {MAX_DRAFT_TOKENS}, got {draft_tokens}"
    return None


def generation_params(args) -> GenerationParams:
    from macllm.generation import GenerationParams  # start-up time: see commands/__init__.py

    problem = sampling_problem(args)
    if problem:
        raise MacllmError(problem)
    for stop in args.stop:
        checked_text(stop, "--stop")
    draft_model = getattr(args, "draft_model", None)
    if draft_model is not None:
        checked_text(draft_model, "--draft-model")
    return GenerationParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                            repetition_penalty=args.repeat_penalty, seed=args.seed,
                            max_tokens=args.max_tokens, stop_strings=tuple(args.stop),
                            enable_thinking=getattr(args, "enable_thinking", None),
                            draft_model=draft_model or None, prompt_lookup=getattr(args, "prompt_lookup", None),
                            draft_tokens=getattr(args, "draft_tokens", 0))


def read_text_arg(text: str | None, file: str | None, what: str = "prompt") -> str:
    if file is not None:
        path = Path(file)
        if path.is_dir():
            raise MacllmError(f"{what} file {file} is a folder; pass a text file")
        if not path.is_file():
            raise MacllmError(f"{what} file not found: {file}")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MacllmError(f"{what} file {file} is not UTF-8 text") from None
    if text is None:
        raise MacllmError(f"give a {what} with --{what} or --{what}-file")
    return checked_text(text, f"--{what}")


def add_adapter_option(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--adapter", "-a", action="append", default=[], required=required, metavar="NAME[:SCALE]",
                   help="apply a LoRA adapter (a name from `macllm adapters list` or a folder), optionally "
                        "scaled; repeat to blend several")


def parse_adapter_specs(specs: list[str]) -> list[tuple[str, str, float]]:
    """["pirate", "terse:0.5"] -> [(ref, name, scale)]; the name is the folder's last part."""
    out, names = [], set()
    for spec in specs:
        ref, scale = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head:
            try:
                scale = float(tail)
            except ValueError:
                raise MacllmError(f"--adapter {spec}: the scale after ':' must be a number") from None
            ref = head
        problem = weight_problem(scale)
        if problem:
            raise MacllmError(f"--adapter {spec}: the scale {problem}")
        name = Path(ref.rstrip("/")).name or ref
        if name in names:
            raise MacllmError(f"--adapter {name} is given twice")
        names.add(name)
        out.append((ref, name, scale))
    return out


def apply_adapters(engine, specs: list[str]) -> None:
    """Load and activate the --adapter options on a running engine."""
    parsed = parse_adapter_specs(specs)
    for ref, name, _ in parsed:
        engine.load_adapter(ref, name=name)
    if parsed:
        engine.set_adapters({name: scale for _, name, scale in parsed})
