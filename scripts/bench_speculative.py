#!/usr/bin/env python3
"""Speculative decoding: decode tok/s with and without guesses, same model, same prompts, one run.

    .venv/bin/python scripts/bench_speculative.py [--target qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b]
        [--notes-models smollm2-135m,qwen2.5-coder-0.5b] [--gen-tokens 128] [--rounds 2] [--draft-tokens 0]
        [--keep-quantized] [--prompts N] [--only code|notes] [--wide-draft]

Two parts. Code: Qwen2.5-Coder-0.5B drafts for the 1.5B on code prompts (its layers narrowed to 4 bits as
the engine holds a draft; --wide-draft keeps the stored 5/8 bits). Notes: prompt lookup on notes
answers (the cited-answer prompt of macllm/rag/answer.py, built from ../shared/data/notes), on each of
--notes-models. Each prompt is prefilled once; then plain and speculative runs alternate, greedy, in this
process on the same loaded weights and the same prefilled cache (each run computes only the prompt's last
token), `--rounds` times, the order flipped each round, so load drifts hit both alike; the text must be
identical. Prints the machine load, a row per prompt, the ratio of decode tok/s (tokens over decode time,
summed over prompts and rounds), the same ratio in process CPU time (less distorted by other processes on a
busy machine) and a JSON summary. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import macllm  # noqa: F401  (OpenBLAS before MLX)

REPO = Path(__file__).resolve().parents[1]
# ../shared/data/notes beside the checkout (a worktree one level deeper finds it one more level up).
NOTES = next((p / "shared" / "data" / "notes" for p in (REPO.parent, REPO.parent.parent)
              if (p / "shared" / "data" / "notes").is_dir()), REPO.parent / "shared" / "data" / "notes")

# Written for this benchmark.
CODE_TASKS = [
    "Write a Python function `merge_intervals(intervals)` that merges overlapping [start, end] intervals and "
    "returns them sorted. Include a docstring and type hints.",
    "Write a Python class `LRUCache` with `get(key)` and `put(key, value)` methods, both O(1), using "
    "collections.OrderedDict. Add a short usage example.",
    "Write a JavaScript function `debounce(fn, wait)` that returns a debounced version of `fn`, and show how to "
    "use it on a window resize handler.",
]
# (note file under ../shared/data/notes, question it answers)
NOTES_QUESTIONS = [
    ("aws/s3-cors.md", "How do I configure CORS on an S3 bucket? Give the exact configuration."),
    ("json/ijson-stream.md", "How can I output full JSON objects from a stream of chunks with ijson? Show the code."),
]


def load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def code_prompt(tokenizer, task: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": task}], add_generation_prompt=True)
    return tokenizer.encode(text)


def notes_prompt(tokenizer, note: str, question: str) -> list[int]:
    """The notes-answer prompt with the note as its excerpt [1], as `macllm ask` builds it after retrieval."""
    from macllm.rag.answer import prompt_ids
    from macllm.rag.retrieve import SearchResult

    text = (NOTES / note).read_text(encoding="utf-8")
    lines = text.count("\n") + 1
    source = SearchResult(note, "", 1, lines, 1.0, text, 0)
    return prompt_ids(question, [source], tokenizer)


def run_pair(name: str, lm, prompt: list[int], gen_tokens: int, fast_params, rounds: int, make_draft=None) -> dict:
    """Plain and speculative, alternating `rounds` times (order flipped each round) on one prefilled cache."""
    import mlx.core as mx

    from macllm.cache import make_cache
    from macllm.generation import GenerationParams, generate
    from macllm.generation.steps import prefill

    cache = make_cache(lm.model)
    mx.eval(prefill(lm.model, prompt[:-1], cache))
    cached = prompt[:-1]
    runs: dict[str, list] = {"plain": [], "fast": []}
    cpu = {"plain": 0.0, "fast": 0.0}  # process CPU time (all threads): what a busy machine distorts least
    for r in range(rounds):
        for kind in (("plain", "fast") if r % 2 == 0 else ("fast", "plain")):
            started = time.process_time()
            if kind == "plain":
                out = generate(lm.model, lm.tokenizer, prompt, GenerationParams(max_tokens=gen_tokens),
                               cache=cache, cached=cached)
            else:
                out = generate(lm.model, lm.tokenizer, prompt, fast_params, cache=cache, cached=cached,
                               draft=make_draft() if make_draft is not None else None)
            cpu[kind] += time.process_time() - started
            cached = out.fed_tokens
            runs[kind].append(out)
    plain, fast = runs["plain"], runs["fast"]

    def seconds(outs) -> float:
        return sum((o.stats.generation_tokens - 1) / max(o.stats.generation_tps, 1e-9) for o in outs)

    tokens = sum(o.stats.generation_tokens - 1 for o in fast)
    proposed = sum(o.stats.draft_proposed for o in fast)
    accepted = sum(o.stats.draft_accepted for o in fast)
    row = {"prompt": name, "prompt_tokens": len(prompt), "tokens": fast[0].stats.generation_tokens,
           "rounds": rounds, "plain_s": seconds(plain), "fast_s": seconds(fast),
           "plain_cpu_s": cpu["plain"], "fast_cpu_s": cpu["fast"],
           "plain_tps": tokens / seconds(plain), "fast_tps": tokens / seconds(fast),
           "acceptance": accepted / proposed if proposed else None,
           "drafted_share": accepted / max(tokens, 1),
           "identical": all(o.token_ids == plain[0].token_ids for o in plain + fast), "load": load()}
    print(f"  {name:<34} {len(prompt):>5} {row['tokens']:>4}  plain {row['plain_tps']:6.2f}  "
          f"speculative {row['fast_tps']:6.2f} tok/s  x{row['fast_tps'] / max(row['plain_tps'], 1e-9):.2f}  "
          f"kept {100 * (row['acceptance'] or 0):3.0f}% of {proposed // rounds} guesses, "
          f"{100 * row['drafted_share']:3.0f}% of tokens drafted  CPU x{cpu['plain'] / max(cpu['fast'], 1e-9):.2f}  "
          f"identical={row['identical']}  load {row['load']}",
          flush=True)
    return row


def summary(label: str, rows: list[dict]) -> dict:
    tokens = sum((r["tokens"] - 1) * r["rounds"] for r in rows)
    plain = tokens / sum(r["plain_s"] for r in rows)
    fast = tokens / sum(r["fast_s"] for r in rows)
    cpu_ratio = sum(r["plain_cpu_s"] for r in rows) / max(sum(r["fast_cpu_s"] for r in rows), 1e-9)
    out = {"part": label, "plain_tps": round(plain, 3), "speculative_tps": round(fast, 3),
           "ratio": round(fast / plain, 3), "cpu_ratio": round(cpu_ratio, 3),
           "identical": all(r["identical"] for r in rows), "rows": rows}
    print(f"{label}: plain {plain:.2f} tok/s, speculative {fast:.2f} tok/s, ratio x{fast / plain:.2f} "
          f"(CPU time x{cpu_ratio:.2f}), greedy text identical: {out['identical']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--notes-models", default="smollm2-135m,qwen2.5-coder-0.5b",
                    help="comma-separated models for the prompt-lookup part")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="plain/speculative pairs per prompt (order flipped)")
    ap.add_argument("--draft-tokens", type=int, default=0, help="guesses per round (0: adaptive)")
    ap.add_argument("--draft-confidence", type=float, default=None,
                    help="end a draft's round after a guess it gives less than this probability "
                         "(default: the engine's; 0: always guess the planned k)")
    ap.add_argument("--wide-draft", action="store_true",
                    help="keep the draft's stored widths (the engine narrows a draft's wider layers to 4 bits)")
    ap.add_argument("--keep-quantized", action="store_true", help="compute on the stored quantized weights")
    ap.add_argument("--only", choices=("code", "notes"), default=None)
    ap.add_argument("--prompts", type=int, default=None, help="the first N prompts of each part (default: all)")
    args = ap.parse_args()

    import mlx.core as mx

    from macllm.engine.draft_slot import narrowed_for_drafting
    from macllm.generation import GenerationParams
    from macllm.generation.speculative import DRAFT_CONFIDENCE, DraftModel, same_vocabulary
    from macllm.loader import load_model

    print(f"load {load()} at start; MACLLM_HOME={os.environ.get('MACLLM_HOME', '(default)')}", flush=True)
    results = []
    if args.only != "notes":
        target = load_model(args.target, keep_quantized=args.keep_quantized, progress=False)
        mx.clear_cache()  # the load's freed buffers: 6 GB of float32 weights leave little room on a 24 GB machine
        print(f"target {args.target}: {target.info.compute}", flush=True)
        draft = load_model(args.draft, keep_quantized=args.keep_quantized, progress=False)
        if not args.wide_draft:
            draft = narrowed_for_drafting(draft)  # as the engine holds a draft
        mx.clear_cache()
        print(f"draft {args.draft}: {draft.info.compute}", flush=True)
        assert same_vocabulary(draft.tokenizer, target.tokenizer), "the draft needs the target's tokenizer"
        params = GenerationParams(max_tokens=args.gen_tokens, draft_tokens=args.draft_tokens)

        confidence = DRAFT_CONFIDENCE if args.draft_confidence is None else args.draft_confidence

        def make_draft():
            return DraftModel(draft.model, draft.tokenizer, confidence=confidence)

        warm = code_prompt(target.tokenizer, "Say hi.")
        run_pair("(warm-up)", target, warm, 4, GenerationParams(max_tokens=4), 1, make_draft)
        rows = [run_pair(f"code {i + 1}", target, code_prompt(target.tokenizer, task), args.gen_tokens, params,
                         args.rounds, make_draft)
                for i, task in enumerate(CODE_TASKS[:args.prompts])]
        results.append(summary(f"draft {args.draft} for {args.target}, code", rows))
        del draft, target
        mx.clear_cache()
    if args.only != "code":
        params = GenerationParams(max_tokens=args.gen_tokens, prompt_lookup=True, draft_tokens=args.draft_tokens)
        for name in args.notes_models.split(","):
            lm = load_model(name, keep_quantized=args.keep_quantized, progress=False)
            print(f"notes model {name}: {lm.info.compute}", flush=True)
            run_pair("(warm-up)", lm, code_prompt(lm.tokenizer, "Say hi."), 4,
                     GenerationParams(max_tokens=4, prompt_lookup=True), 1)
            rows = [run_pair(f"notes {note}", lm, notes_prompt(lm.tokenizer, note, q), args.gen_tokens, params,
                             args.rounds)
                    for note, q in NOTES_QUESTIONS[:args.prompts]]
            results.append(summary(f"prompt lookup on {name}, notes answers", rows))
            del lm
            mx.clear_cache()
    print(json.dumps({"load_end": load(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
