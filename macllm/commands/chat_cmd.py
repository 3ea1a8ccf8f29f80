"""`macllm chat`: the full-screen app on a model (with adapters); `--plain` is line mode."""

from __future__ import annotations

import os
import sys
from typing import Protocol

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
    parse_adapter_specs,
)
from macllm.commands.thinking_echo import ThinkingEcho
from macllm.errors import MacllmError


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the full-screen app (--plain: line mode)")
    add_model_option(p)
    add_prompt_cache_option(p)
    add_adapter_option(p)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--plain", action="store_true", help="line-mode chat in this terminal")
    add_thinking_option(p)
    add_sampling_options(p)
    add_speculative_options(p)
    # Chat samples by default: small models loop when greedy.
    p.set_defaults(run=run, max_tokens=512, temp=0.7, top_p=0.95, min_p=0.05)


def format_count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


class AppLauncher(Protocol):
    """Starts the full-screen app and returns when it closes (the UI layer provides it: tui/launch.py)."""

    def __call__(self, *, model: str, keep_quantized: bool, default_settings: dict,
                 adapters: list[tuple[str, str, float]], kv_bits: int | None) -> None: ...


def run(args) -> int:
    if args.system is not None:
        checked_text(args.system, "--system")
    app = getattr(args, "app", None)
    if args.plain or app is None or not sys.stdout.isatty():
        return run_plain_chat(args)
    return run_app(args, app)


def run_app(args, app: AppLauncher) -> int:
    """The full-screen app. The model is fetched first, here in the terminal, so a first download shows
    pip's progress bar; loading happens inside the app, which is usable at once."""
    from macllm.hub.resolve import resolve_model  # start-up time: see commands/__init__.py
    from macllm.lora import store

    resolve_model(args.model, progress=True)
    adapters = parse_adapter_specs(args.adapter)
    for ref, _, _ in adapters:
        store.resolve(ref)  # a missing adapter is a one-line error here, before the screen changes
    defaults = {"temperature": args.temp, "top_p": args.top_p, "min_p": args.min_p, "max_tokens": args.max_tokens}
    if args.system:
        defaults["system"] = args.system
    if args.enable_thinking is not None:
        defaults["thinking"] = args.enable_thinking
    if args.draft_model:
        defaults["draft_model"] = checked_text(args.draft_model, "--draft-model")
    if args.prompt_lookup is not None:
        defaults["prompt_lookup"] = args.prompt_lookup
    if args.prompt_cache_mb is not None:  # the app's engine reads the cap as every engine does without one given
        from macllm.prompt_cache.limit import ENV, check_mb

        os.environ[ENV] = str(check_mb(args.prompt_cache_mb, "--prompt-cache-mb"))
    app(model=args.model, keep_quantized=args.keep_quantized, default_settings=defaults, adapters=adapters,
        kv_bits=args.kv_bits)
    return 0


def run_plain_chat(args) -> int:
    from macllm.engine import Engine  # start-up time: see commands/__init__.py

    params = generation_params(args)
    if sys.stderr.isatty():  # a status line only for people; errors stay one line
        print(f"Loading {args.model}…", file=sys.stderr)
    with Engine(args.model, keep_quantized=args.keep_quantized, kv_bits=args.kv_bits,
                prompt_cache_mb=args.prompt_cache_mb) as engine:
        apply_adapters(engine, args.adapter)
        info = engine.info
        assert info is not None, "the engine was started with a model"
        print(f"{info.architecture} · {format_count(info.parameters)} parameters · {info.compute}", file=sys.stderr)
        print("Type a message and press Enter. Ctrl-C stops an answer; Ctrl-D or /quit leaves; /new starts over.",
              file=sys.stderr)
        chat_loop(engine, args.system, params)
    return 0


def chat_loop(engine, system: str | None, params) -> None:
    from macllm.generation import GenerationResult  # start-up time: see commands/__init__.py

    conv = engine.new_conversation(system=system)
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print()
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        try:
            checked_text(text, "that line")
        except MacllmError as e:  # a typing slip, not a reason to end the chat
            print(f"macllm: {e}", file=sys.stderr)
            continue
        if text == "/new":
            engine.close_conversation(conv)  # frees its KV cache
            conv = engine.new_conversation(system=system)
            print("(new chat)", file=sys.stderr)
            continue
        stream = engine.chat(conv, text, params)
        thinking = ThinkingEcho()
        try:
            for event in stream:
                if isinstance(event, GenerationResult):
                    thinking.end_thinking()
                    s = event.stats
                    mark = " (stopped)" if event.finish_reason == "cancelled" else ""
                    print(f"\n[{s.generation_tokens} tokens, {s.generation_tps:.1f} tok/s, first token "
                          f"{s.ttft_s * 1000:.0f} ms]{mark}", file=sys.stderr)
                else:
                    thinking.show(event.reasoning, event.text)
        except KeyboardInterrupt:
            thinking.end_thinking()
            stream.cancel()
            stream.result()
            print("\n(stopped)", file=sys.stderr)
