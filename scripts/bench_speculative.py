#!/usr/bin/env python3
"""Speculative decoding: decode tok/s with and without guesses, same model, same prompts, one run.

    .venv/bin/python scripts/bench_speculative.py [--target qwen2.5-coder-1.5b] [--draft qwen2.5-coder-0.5b]
        [--notes-model qwen2.5-coder-1.5b] [--gen-tokens 64] [--draft-tokens 0] [--keep-quantized] [--prompts N]

Two parts. Code: Qwen2.5-Coder-0.5B drafts for the 1.5B on code prompts. Notes: prompt lookup on notes
answers (the cited-answer prompt of macllm/rag/answer.py, built from ../shared/data/notes). Each prompt runs
plain then speculative, greedy, back to back in this process on the same loaded weights, so load drifts hit
both alike; the text must be identical. Prints the machine load, a row per run, the ratio of decode tok/s
(tokens over decode time, summed over the prompts) and a JSON summary. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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


def run_pair(name: str, lm, prompt: list[int], gen_tokens: int, fast_params, draft=None) -> dict:
    from macllm.generation import GenerationParams, generate

    plain = generate(lm.model, lm.tokenizer, prompt, GenerationParams(max_tokens=gen_tokens))
    fast = generate(lm.model, lm.tokenizer, prompt, fast_params, draft=draft)
    s, f = plain.stats, fast.stats
    row = {"prompt": name, "prompt_tokens": len(prompt), "tokens": f.generation_tokens,
           "plain_tps": s.generation_tps, "fast_tps": f.generation_tps,
           "plain_s": (s.generation_tokens - 1) / max(s.generation_tps, 1e-9),
           "fast_s": (f.generation_tokens - 1) / max(f.generation_tps, 1e-9),
           "acceptance": f.acceptance_rate, "identical": plain.token_ids == fast.token_ids, "load": load()}
    print(f"  {name:<34} {len(prompt):>5} {f.generation_tokens:>4}  plain {s.generation_tps:6.2f}  "
          f"speculative {f.generation_tps:6.2f} tok/s  x{f.generation_tps / max(s.generation_tps, 1e-9):.2f}  "
          f"accepted {100 * (f.acceptance_rate or 0):3.0f}%  identical={row['identical']}  load {row['load']}",
          flush=True)
    return row


def summary(label: str, rows: list[dict]) -> dict:
    tokens = sum(r["tokens"] - 1 for r in rows)
    plain = tokens / sum(r["plain_s"] for r in rows)
    fast = tokens / sum(r["fast_s"] for r in rows)
    out = {"part": label, "plain_tps": round(plain, 3), "speculative_tps": round(fast, 3),
           "ratio": round(fast / plain, 3), "identical": all(r["identical"] for r in rows), "rows": rows}
    print(f"{label}: plain {plain:.2f} tok/s, speculative {fast:.2f} tok/s, ratio x{fast / plain:.2f}, "
          f"greedy text identical: {out['identical']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--notes-model", default=None, help="model for the prompt-lookup part (default: --target)")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--draft-tokens", type=int, default=0, help="guesses per round (0: adaptive)")
    ap.add_argument("--keep-quantized", action="store_true", help="compute on the stored quantized weights")
    ap.add_argument("--only", choices=("code", "notes"), default=None)
    ap.add_argument("--prompts", type=int, default=None, help="the first N prompts of each part (default: all)")
    args = ap.parse_args()

    import macllm  # noqa: F401  (OpenBLAS before MLX)
    from macllm.generation import GenerationParams
    from macllm.generation.speculative import DraftModel, same_vocabulary
    from macllm.loader import load_model

    print(f"load {load()} at start; MACLLM_HOME={os.environ.get('MACLLM_HOME', '(default)')}", flush=True)
    results = []
    import mlx.core as mx

    target = load_model(args.target, keep_quantized=args.keep_quantized, progress=False)
    mx.clear_cache()  # the load's freed buffers: 6 GB of float32 weights leave little room on a 24 GB machine
    print(f"target {args.target}: {target.info.compute}", flush=True)
    if args.only != "notes":
        draft = load_model(args.draft, keep_quantized=args.keep_quantized, progress=False)
        mx.clear_cache()
        print(f"draft {args.draft}: {draft.info.compute}", flush=True)
        assert same_vocabulary(draft.tokenizer, target.tokenizer), "the draft needs the target's tokenizer"
        params = GenerationParams(max_tokens=args.gen_tokens, draft_tokens=args.draft_tokens)
        warm = code_prompt(target.tokenizer, "Say hi.")
        run_pair("(warm-up)", target, warm, 4, GenerationParams(max_tokens=4),
                 draft=DraftModel(draft.model, draft.tokenizer))
        rows = [run_pair(f"code {i + 1}", target, code_prompt(target.tokenizer, task), args.gen_tokens, params,
                         draft=DraftModel(draft.model, draft.tokenizer))
                for i, task in enumerate(CODE_TASKS[:args.prompts])]
        results.append(summary(f"draft {args.draft} for {args.target}, code", rows))
        del draft
    if args.only != "code":
        lm = target
        if args.notes_model and args.notes_model != args.target:
            del target
            lm = load_model(args.notes_model, keep_quantized=args.keep_quantized, progress=False)
        params = GenerationParams(max_tokens=args.gen_tokens, prompt_lookup=True, draft_tokens=args.draft_tokens)
        rows = [run_pair(f"notes {note}", lm, notes_prompt(lm.tokenizer, note, q), args.gen_tokens, params)
                for note, q in NOTES_QUESTIONS[:args.prompts]]
        results.append(summary(f"prompt lookup on {args.notes_model or args.target}, notes answers", rows))
    print(json.dumps({"load_end": load(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
