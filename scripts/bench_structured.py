"""What constrained decoding costs per token inside generation, ours against llama.cpp's grammar sampler.

One GGUF (SmolLM2-135M-Instruct Q4_1 by default, `--model` for another), one chat prompt, greedy. For each of
macllm and llama.cpp (llama-cpp-python) it decodes `--tokens` tokens unconstrained and constrained by one JSON
schema (a free string, so the answer runs the full length; llama.cpp's GBNF conversion refuses long
length bounds), interleaved, `--rounds` times, and prints
the decode rate (tokens after the first / time from the first token to the last) and each side's cost of the
constraint: the ratio constrained / unconstrained time per token.

Run: PYTHONPATH=$PWD .venv/bin/python scripts/bench_structured.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from macllm.generation import GenerationParams, TokenEvent, stream_generate
from macllm.loader import load_model
from macllm.structured import compile_constraint

HOME = Path(os.environ.get("MACLLM_TEST_HOME", Path.home() / ".cache" / "macllm-test"))
DEFAULT_MODEL = HOME / "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
SCHEMA = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                           "story": {"type": "string"}},
          "required": ["title", "story"], "additionalProperties": False}
QUESTION = "Write a long story about a dragon who learns to bake bread, as JSON with a title and a story."


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def decode_rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def ours(loaded, prompt: list[int], tokens: int, constraint) -> tuple[float, int]:
    params = GenerationParams(max_tokens=tokens, constraint=constraint)
    stamps = [time.perf_counter() for e in stream_generate(loaded.model, loaded.tokenizer, prompt, params)
              if isinstance(e, TokenEvent)]
    return decode_rate(stamps), len(stamps)


def theirs(llm, prompt: str, tokens: int, grammar) -> tuple[float, int]:
    stamps = [time.perf_counter() for _ in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0,
                                                                 grammar=grammar, stream=True)]
    return decode_rate(stamps), len(stamps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from llama_cpp import Llama, LlamaGrammar

    print(f"load before: {load()}")
    loaded = load_model(args.model, progress=False)
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}])
    prompt = loaded.tokenizer.encode(text)
    constraint = compile_constraint(loaded.tokenizer, json_schema=SCHEMA)
    llm = Llama(model_path=args.model, n_ctx=1024, n_threads=2, verbose=False)
    grammar = LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)
    keys = ("ours free", "ours json", "llama.cpp free", "llama.cpp json")
    rates: dict[str, list[float]] = {k: [] for k in keys}
    counts: dict[str, list[int]] = {k: [] for k in keys}
    for _ in range(args.rounds):
        for key, run in (("ours free", lambda: ours(loaded, prompt, args.tokens, None)),
                         ("ours json", lambda: ours(loaded, prompt, args.tokens, constraint)),
                         ("llama.cpp free", lambda: theirs(llm, text, args.tokens, None)),
                         ("llama.cpp json", lambda: theirs(llm, text, args.tokens, grammar))):
            rate, count = run()
            counts[key].append(count)
            rates[key].append(rate)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"model {Path(args.model).name}, {args.tokens} tokens, median of {args.rounds} interleaved rounds")
    print("| engine | free tok/s | JSON-schema tok/s (tokens) | cost per token of the constraint |")
    print("|---|---|---|---|")
    for side in ("ours", "llama.cpp"):
        free, constrained = med[f"{side} free"], med[f"{side} json"]
        extra_ms = (1 / constrained - 1 / free) * 1000
        print(f"| {side} | {free:.1f} | {constrained:.1f} ({max(counts[f'{side} json'])}) "
              f"| {extra_ms:+.2f} ms ({free / constrained:.3f}x) |")
    print(f"load after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
