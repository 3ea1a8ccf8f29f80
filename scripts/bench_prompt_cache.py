#!/usr/bin/env python3
"""Resuming a long chat after a restart: time to first token with the prompt cache on disk vs re-reading the
chat, same model, one run. Not a test: prints a table, the ratios, and a JSON summary.

    .venv/bin/python scripts/bench_prompt_cache.py [--models smollm2-135m qwen2.5-coder-0.5b] [--tokens 4000]

Per model, each step in its own process (a restart is a new process; MACLLM_HOME is a fresh temporary folder,
the models come from $MACLLM_MODELS_HOME, default ~/.cache/macllm-test):
  1. session: the Engine reads a ~N-token chat (system prompt + turns), answers it (8 tokens, greedy) and so saves
     its cache; then, still in memory, it takes the next question: the reference log-probabilities.
  2. resumed / re-read, interleaved `--rounds` times: a new process with the model loaded and warmed up reopens
     the chat with the answer and asks the next question, with the cache (resumed) or with it off (re-read). TTFT
     is wall time from `chat()` to the first token: file lookup, checks, loading and the rest of the prefill.
Log-probabilities of the first answer token (top 50) are compared: resumed vs the session's in-memory cache
(must be identical) and vs re-read (the same up to float rounding: a re-read prefills in other chunks).
The cache file sits in the OS page cache (warm), as it does after a restart of the app without a reboot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARAGRAPH = (  # written for this benchmark: varied prose so the chat tokenizes like real text
    "The harbour town woke slowly. Fishing boats came in with the tide, gulls argued over the nets, and the "
    "baker on Quay Street opened at six as she had for thirty-one years. In 1987 a storm took the old pier; "
    "the new one, built of concrete and steel, cost 2.4 million and took three summers to finish. "
)
QUESTIONS = ["What happened to the old pier?", "Who opens first on Quay Street?", "How long did the pier take?",
             "What do the gulls do?", "Summarise the town in a sentence.", "What did the new pier cost?"]
SYSTEM = "You are a careful assistant. Answer from the conversation only, briefly. " * 4
NEXT_QUESTION = "Thank you. Now list three things a visitor should see first, in order."
TOP = 50


def chat_messages(tokenizer, target: int) -> list[dict]:
    """User/assistant turns until the rendered chat reaches about `target` tokens."""
    messages: list[dict] = []
    i = 0
    while True:
        turn = [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} {PARAGRAPH}"},
                {"role": "assistant", "content": f"{PARAGRAPH} {PARAGRAPH[: 120 + 7 * i]}"}]
        text = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}] + messages + turn,
                                             add_generation_prompt=True)
        if len(tokenizer.encode(text)) > target:
            return messages
        messages += turn
        i += 1


# ---------------------------------------------------------------- workers (one per process)
def first_token(stream) -> tuple[float, object]:
    from macllm.generation import GenerationResult, TokenEvent

    t0 = time.perf_counter()
    ttft, event, result = None, None, None
    for item in stream:
        if isinstance(item, TokenEvent) and ttft is None:
            ttft, event = time.perf_counter() - t0, item
        if isinstance(item, GenerationResult):
            result = item
    return ttft, (event, result)


def worker(args) -> dict:
    import macllm  # noqa: F401  (OpenBLAS before MLX)
    from macllm.engine import Engine
    from macllm.generation import GenerationParams

    ask = GenerationParams(max_tokens=1, temperature=0.0, top_alternatives=TOP)
    mb = 0 if args.worker == "reread" else 8192
    with Engine(args.model, progress=False, prompt_cache_mb=mb) as engine:
        engine.prompt_cache.min_tokens = 256
        warm = engine.new_conversation()
        list(engine.chat(warm, "Hello there.", GenerationParams(max_tokens=2)))  # first-call costs, no cache use
        tok = engine.tokenizer
        out: dict = {}
        if args.worker == "session":
            messages = chat_messages(tok, args.tokens)
            conv = engine.new_conversation(system=SYSTEM, messages=messages)
            t0 = time.perf_counter()
            answer = [e for e in engine.reply(conv, GenerationParams(max_tokens=8, temperature=0.0))][-1]
            out["session_read_s"] = time.perf_counter() - t0
            out["chat_tokens"] = answer.stats.prompt_tokens
            out["messages"] = engine.conversation(conv).messages
            engine.prompt_cache.min_tokens = 10**9  # the next turn stays in memory: the file holds the chat
        else:
            conv = engine.new_conversation(system=SYSTEM, messages=json.loads(Path(args.messages).read_text()))
        ttft, (event, result) = first_token(engine.chat(conv, NEXT_QUESTION, ask))
        files = sorted((Path(os.environ["MACLLM_HOME"]) / "cache").glob("*.safetensors"))
        out |= {"ttft_s": ttft, "prompt_tokens": result.stats.prompt_tokens,
                "prefilled_tokens": result.stats.prefilled_tokens, "first_token": event.token_id,
                "logprob": event.logprob, "alternatives": event.alternatives,
                "cache_file_mb": sum(f.stat().st_size for f in files) / 2**20, "compute": engine.info.compute}
        return out


def run_worker(kind: str, model: str, home: Path, tokens: int, messages: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", model, "--tokens", str(tokens)]
    if messages is not None:
        cmd += ["--messages", str(messages)]
    env = dict(os.environ, MACLLM_HOME=str(home))
    env.pop("MACLLM_PROMPT_CACHE_MB", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a: dict, b: dict) -> dict:
    """Top-50 log-probabilities of the first answer token: identical? the largest difference on shared ids?"""
    pa, pb = dict(map(tuple, a["alternatives"])), dict(map(tuple, b["alternatives"]))
    shared = set(pa) & set(pb)
    return {"identical": a["alternatives"] == b["alternatives"] and a["logprob"] == b["logprob"],
            "same_token": a["first_token"] == b["first_token"],
            "max_abs_diff": max((abs(pa[i] - pb[i]) for i in shared), default=float("nan"))}


def bench_model(model: str, tokens: int, rounds: int, models_home: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-pcache-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        (home / "models").symlink_to(models_home / "models")  # the pulled model, not a second download
        session = run_worker("session", model, home, tokens)
        messages = Path(tmp) / "messages.json"
        messages.write_text(json.dumps(session["messages"]))
        resumed, reread = [], []
        for _ in range(rounds):  # interleaved, so a change of machine load hits both
            reread.append(run_worker("reread", model, home, tokens, messages))
            resumed.append(run_worker("resumed", model, home, tokens, messages))
    best_resumed = min(r["ttft_s"] for r in resumed)
    best_reread = min(r["ttft_s"] for r in reread)
    return {"model": model, "compute": session["compute"], "chat_tokens": session["chat_tokens"],
            "prompt_tokens": resumed[0]["prompt_tokens"], "cache_file_mb": round(resumed[0]["cache_file_mb"], 1),
            "resumed_prefilled": resumed[0]["prefilled_tokens"], "reread_prefilled": reread[0]["prefilled_tokens"],
            "ttft_resumed_s": [round(r["ttft_s"], 3) for r in resumed],
            "ttft_reread_s": [round(r["ttft_s"], 3) for r in reread],
            "speedup": round(best_reread / best_resumed, 1),
            "resumed_vs_in_memory": compare(resumed[0], session),
            "resumed_vs_reread": compare(resumed[0], reread[0]),
            "resumed_rounds_identical": all(r["alternatives"] == resumed[0]["alternatives"] for r in resumed)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-coder-0.5b"])
    p.add_argument("--tokens", type=int, default=4000, help="length of the chat to resume (default 4000)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", choices=("session", "resumed", "reread"))
    p.add_argument("--model")
    p.add_argument("--messages")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    models_home = Path(os.environ.get("MACLLM_MODELS_HOME", Path.home() / ".cache" / "macllm-test"))
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min, {os.cpu_count()} cores)")
    results = []
    for model in args.models:
        r = bench_model(model, args.tokens, args.rounds, models_home)
        results.append(r)
        print(f"\n{model} ({r['compute']}): a {r['chat_tokens']}-token chat, next turn {r['prompt_tokens']} tokens; "
              f"cache file {r['cache_file_mb']} MiB")
        print(f"  TTFT re-read  {r['ttft_reread_s']} s  ({r['reread_prefilled']} tokens prefilled)")
        print(f"  TTFT resumed  {r['ttft_resumed_s']} s  ({r['resumed_prefilled']} tokens prefilled)")
        print(f"  speed-up (best of each): {r['speedup']}x")
        print(f"  first-token log-probs, resumed vs in-memory: {r['resumed_vs_in_memory']}")
        print(f"  first-token log-probs, resumed vs re-read:   {r['resumed_vs_reread']}")
    print(f"\nload after: {os.getloadavg()[0]:.2f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
