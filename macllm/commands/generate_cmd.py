"""`macllm generate`: one completion, streamed to the terminal or printed as JSON."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from macllm.commands.constraint_options import add_constraint_options, constraint_spec
from macllm.commands.options import (
    add_adapter_option,
    add_model_option,
    add_prompt_cache_option,
    add_sampling_options,
    add_speculative_options,
    add_thinking_option,
    apply_adapters,
    checked_text,
    generation_params,
    read_text_arg,
)
from macllm.commands.thinking_echo import ThinkingEcho

if TYPE_CHECKING:
    from macllm.generation import GenerationResult


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    add_model_option(p)
    add_prompt_cache_option(p)
    add_adapter_option(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", "-p", help="the prompt text")
    src.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system prompt (with --chat)")
    add_thinking_option(p)
    add_sampling_options(p)
    add_constraint_options(p)
    add_speculative_options(p)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with text (the answer), reasoning (a reasoning model's thinking), "
                        "tokens and stats")
    p.set_defaults(run=run)


def run(args) -> int:
    from macllm.engine import Engine  # start-up time: see commands/__init__.py
    from macllm.structured import compile_constraint

    prompt = read_text_arg(args.prompt, args.prompt_file)
    params = generation_params(args)
    if args.system is not None:
        checked_text(args.system, "--system")
    shape = constraint_spec(args)
    with Engine(args.model, keep_quantized=args.keep_quantized, progress=not args.json,
                kv_bits=args.kv_bits,
                prompt_cache_mb=args.prompt_cache_mb) as engine:
        apply_adapters(engine, args.adapter)
        if shape:
            params.constraint = compile_constraint(engine.tokenizer, **shape)
        result = complete(engine, args, prompt, params)
    if args.json:
        print_json(result)
    else:
        print_stats(result)
    return 0


def complete(engine, args, prompt: str, params) -> GenerationResult:
    """Run the prompt; stream text to stdout unless --json. Returns the final result."""
    from macllm.generation import GenerationResult

    if args.chat:
        stream = engine.chat(engine.new_conversation(system=args.system), prompt, params)
    else:
        stream = engine.generate(prompt, params)
    result = None
    thinking = ThinkingEcho()
    for event in stream:
        if isinstance(event, GenerationResult):
            result = event
        elif not args.json:
            thinking.show(event.reasoning, event.text)
    thinking.end_thinking()
    assert result is not None, "a finished stream ends with its result"
    return result


def print_json(result: GenerationResult) -> None:
    s = result.stats
    print(json.dumps({
        "text": result.text, "reasoning": result.reasoning, "token_ids": result.token_ids,
        "prompt_tokens": s.prompt_tokens, "prefilled_tokens": s.prefilled_tokens,  # the rest came from a cache
        "generation_tokens": s.generation_tokens, "prompt_tps": round(s.prompt_tps, 2),
        "generation_tps": round(s.generation_tps, 2), "ttft_s": round(s.ttft_s, 4),
        "peak_memory_mb": round(s.peak_memory_mb, 1), "finish_reason": result.finish_reason,
        "draft_proposed": s.draft_proposed, "draft_accepted": s.draft_accepted,
    }, ensure_ascii=False))


def print_stats(result: GenerationResult) -> None:
    s = result.stats
    print()
    reused = s.prompt_tokens - s.prefilled_tokens
    from_cache = f" ({reused} from the prompt cache)" if reused else ""
    rate = s.acceptance_rate
    guesses = f", {100 * rate:.0f}% of {s.draft_proposed} guesses kept" if rate is not None else ""
    print(f"[{s.prompt_tokens} prompt tokens{from_cache} at {s.prompt_tps:.1f} tok/s, {s.generation_tokens} generated "
          f"at {s.generation_tps:.1f} tok/s{guesses}, first token {s.ttft_s * 1000:.0f} ms, "
          f"peak {s.peak_memory_mb:.0f} MB, {result.finish_reason}]", file=sys.stderr)
