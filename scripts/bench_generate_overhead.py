#!/usr/bin/env python3
"""What a generated token costs besides the model's forward pass. Not a test: prints a table.

    MACLLM_HOME=~/.cache/macllm-test .venv/bin/python scripts/bench_generate_overhead.py [--model smollm2-135m]
        [--prompt-tokens 256] [--gen-tokens 128] [--rounds 3]

One process, one loaded model, one prefilled prompt that every variant decodes from (the cache is trimmed
back between them), the variants interleaved over `--rounds` rounds, each variant's best round reported
in wall and in process CPU time per token:
- bare loop: the model and an argmax, the next step queued before the token is read (the floor);
- decode_steps: the token loop with the TokenChooser (log-probabilities, sampling, alternatives);
- stream_generate: the whole text layer on top (detokenizing, stop strings, events, timing), also with
  the token chosen by MLX's ops instead of our one-node op (csrc/sample_token.cpp), as before it;
each greedy as bench.py runs it, greedy with the token inspector's 5 alternatives, and sampled with the
app's defaults (temperature 0.7, top-p 0.95, min-p 0.05, 5 alternatives). Then the chooser alone on fixed
logits (one eval each, best of 50) and the text layer alone on the tokens the model produced.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import macllm  # noqa: F401  (OpenBLAS before MLX)

# isort: split
import mlx.core as mx

from macllm.cache import cache_length, make_cache, trim_cache
from macllm.generation import GenerationParams, sampling, stream_generate
from macllm.generation.params import GenerationResult
from macllm.generation.sampling import greedy_choices
from macllm.generation.steps import TokenChooser, decode_steps, prefill
from macllm.generation.stop_strings import StopStringWatcher
from macllm.loader import load_model

PARAGRAPH = ("The harbour town woke slowly. Fishing boats came in with the tide, gulls argued over the nets, and "
             "the baker on Quay Street opened at six as she had for thirty-one years. ")

SETTINGS = {
    "greedy": dict(temperature=0.0),
    "greedy + 5 alternatives": dict(temperature=0.0, top_alternatives=5),
    "app default (T 0.7, top-p 0.95, min-p 0.05, 5 alt.)": dict(temperature=0.7, top_p=0.95, min_p=0.05,
                                                                top_alternatives=5, seed=1),
}


@contextlib.contextmanager
def mlx_ops_choose():
    """The token chosen by the MLX composition (what ran before csrc/sample_token.cpp), for comparison."""
    one_node = sampling.one_node
    sampling.one_node = lambda logits: False
    try:
        yield
    finally:
        sampling.one_node = one_node


def with_mlx_ops(run):
    def wrapped():
        with mlx_ops_choose():
            return run()
    return wrapped


class Clock:
    """Wall and process CPU seconds per token (CPU time is less distorted by other processes' load)."""

    def __init__(self, tokens: int):
        self.tokens = tokens

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = (time.perf_counter() - self.wall) / self.tokens
        self.cpu = (time.process_time() - self.cpu) / self.tokens


def bare_loop(model, cache, logits: mx.array, n: int) -> Clock:
    token = mx.argmax(logits, axis=-1)
    mx.eval(token)
    with Clock(n) as clock:
        for i in range(n):
            nxt = mx.argmax(model(token[None], cache=cache)[:, -1, :], axis=-1) if i + 1 < n else None
            if nxt is not None:
                mx.async_eval(nxt)
            token.item()
            token = nxt
    return clock


def loop_steps(model, cache, logits: mx.array, prompt: list[int], n: int, params: GenerationParams) -> Clock:
    choose = TokenChooser(params, prompt)
    first = choose(logits)
    mx.eval(first)
    with Clock(n) as clock:
        for _ in decode_steps(model, cache, first, choose, n):
            pass
    return clock


def loop_stream(model, tokenizer, cache, prompt: list[int], n: int, params: GenerationParams) -> Clock:
    """The whole call, its one-token prefill (the prompt's last token, the rest reused) included."""
    with Clock(n) as clock:
        for event in stream_generate(model, tokenizer, prompt, params, cache=cache, cached=prompt):
            if isinstance(event, GenerationResult):
                assert event.stats.generation_tokens == n, "an end of text came early: use another prompt"
    return clock


def best_ms(fn, rounds: int = 50) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lm = load_model(args.model, progress=False)
    model, tokenizer = lm.model, lm.tokenizer
    text = PARAGRAPH
    while len(tokenizer.encode(text)) < args.prompt_tokens:
        text += PARAGRAPH
    prompt = tokenizer.encode(text)[:args.prompt_tokens]
    n = args.gen_tokens
    cache = make_cache(model)
    logits = prefill(model, prompt, cache)
    mx.eval(logits)
    base = cache_length(cache)

    def reset() -> None:
        trim_cache(cache, cache_length(cache) - base)

    # An end-of-text token would end a stream early; the benchmark wants n tokens every time.
    no_stop = dict(max_tokens=n)
    eos = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()
    variants = {"bare loop (model + argmax)": lambda: bare_loop(model, cache, logits, n)}
    for name, kw in SETTINGS.items():
        params = GenerationParams(**kw, **no_stop)
        variants[f"decode_steps, {name}"] = lambda p=params: loop_steps(model, cache, logits, prompt, n, p)
        variants[f"stream_generate, {name}"] = lambda p=params: loop_stream(model, tokenizer, cache, prompt, n, p)
        variants[f"stream_generate, {name}, MLX ops choose"] = with_mlx_ops(
            lambda p=params: loop_stream(model, tokenizer, cache, prompt, n, p))
    wall = {name: float("inf") for name in variants}
    cpu = dict(wall)
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, run in variants.items():
            clock = run()
            wall[name], cpu[name] = min(wall[name], clock.wall), min(cpu[name], clock.cpu)
            reset()
        loads.append(os.getloadavg()[0])
    tokenizer.eos_token_ids = eos

    bare = "bare loop (model + argmax)"
    print(f"{args.model}: {args.prompt_tokens}-token prompt, {n} tokens, best of {args.rounds} rounds; "
          f"load average {min(loads):.1f}-{max(loads):.1f}")
    print("| variant | wall ms per token | tok/s | over the bare loop (ms) | CPU ms per token | over the bare loop |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name in variants:
        print(f"| {name} | {wall[name] * 1e3:.2f} | {1 / wall[name]:.1f} | {(wall[name] - wall[bare]) * 1e3:+.2f} | "
              f"{cpu[name] * 1e3:.2f} | {(cpu[name] - cpu[bare]) * 1e3:+.2f} |")

    # The chooser alone: one choice from fixed logits, evaluated (what it adds to a step's graph).
    fixed = mx.random.normal((1, logits.shape[-1])) * 4
    mx.eval(fixed)
    print("\n| the chooser alone, one evaluated choice on fixed logits | ms |\n|---|---:|")
    print(f"| argmax only | {best_ms(lambda: mx.eval(mx.argmax(fixed, axis=-1))):.3f} |")
    for name, kw in SETTINGS.items():
        choose = TokenChooser(GenerationParams(**kw), prompt)
        print(f"| TokenChooser, {name} | {best_ms(lambda c=choose: mx.eval(c(fixed))):.3f} |")
        with mlx_ops_choose():
            print(f"| TokenChooser, {name}, MLX ops | {best_ms(lambda c=choose: mx.eval(c(fixed))):.3f} |")

    # Speculative decoding's greedy verification: six rows (five guesses and the extra token) at once.
    rows = mx.random.normal((6, logits.shape[-1])) * 4
    mx.eval(rows)
    print(f"| greedy_choices, 6 rows + 5 alternatives | {best_ms(lambda: mx.eval(greedy_choices(rows, 5))):.3f} |")
    with mlx_ops_choose():
        print(f"| greedy_choices, 6 rows + 5 alternatives, MLX ops | "
              f"{best_ms(lambda: mx.eval(greedy_choices(rows, 5))):.3f} |")

    # The text layer alone on real output: detokenizing and stop strings per token.
    tokens = [e.token_id for e in stream_generate(model, tokenizer, prompt, GenerationParams(max_tokens=n),
                                                  cache=cache, cached=prompt) if not isinstance(e, GenerationResult)]
    reset()

    def text_layer(stops: tuple[str, ...]) -> None:
        detok, watch = tokenizer.stream_decoder(), StopStringWatcher(stops)
        for tok in tokens:
            watch.feed(detok.add(tok))

    per = max(len(tokens), 1)
    print("\n| the text layer alone, per token | ms |\n|---|---:|")
    print(f"| detokenizing | {best_ms(lambda: text_layer(()), 5) / per:.3f} |")
    print(f"| detokenizing + 2 stop strings | {best_ms(lambda: text_layer(('</s>', 'User:')), 5) / per:.3f} |")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
