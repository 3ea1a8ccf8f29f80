"""Record llama.cpp's tokenization and greedy continuations of a catalog model as a reference for our tests.

llama.cpp (through llama-cpp-python) is an implementation independent of ours, so its prompt ids and
greedy tokens are a fair yardstick for tests/test_reference_llamacpp.py, tests/test_mlx_lm_agreement.py
and tests/test_qwen_coder.py.

Rerun (needs llama-cpp-python in the venv; well under a minute on 2 cores for SmolLM2, minutes for Qwen):

    cd /work/main
    .venv/bin/python scripts/record_reference.py                 # pulls smollm2-135m via macllm.hub
    .venv/bin/python scripts/record_reference.py path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    .venv/bin/python scripts/record_reference.py --catalog qwen2.5-coder-0.5b   # or qwen2.5-coder-1.5b

It rewrites tests/data/<model>_llamacpp_reference.json (use --out to write elsewhere). Greedy means
argmax over llama.cpp's raw logits, read after each low-level `eval`; no sampler is involved. The Qwen
recipes also record llama.cpp's argmax at every position of one fixed code text (teacher forcing on a
text neither implementation wrote).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "smollm2_llamacpp_reference.json"
CONTINUATION_TOKENS = 32
SEED = 1234
N_CTX = 512
N_THREADS = 2

CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)

# Raw text, not chat-formatted unless it says so: each one stresses a different part of the tokenizer.
PROMPTS: list[tuple[str, str]] = [
    ("prose", "The old lighthouse keeper climbed the stairs every evening. One night, as the storm grew"),
    ("code", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n'),
    ("math", "Compute 12345 + 67890 = 80235. Then 3.14159 * 2 = 6.28318, and 2^10 ="),
    ("sequence", "1, 1, 2, 3, 5, 8, 13, 21, 34,"),
    ("accents", "Le café crème était déjà prêt à l'hôtel; über naïve façade, señor Muñoz dijo:"),
    ("emoji", "I love pizza 🍕 and coffee ☕! Today's mood: 😀🎉👍🏽 because"),
    ("cjk", "東京は日本の首都です。中文：我喜欢学习编程。한국어도 조금 할 수 있어요. In English,"),
    ("chat", CHAT_PROMPT),
    ("chat_code", "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n"
                  "<|im_start|>assistant\n"),
    ("whitespace", "Line one\n\n\n    indented   with   spaces\t\ttabs\n\n  \n- item\n- item two\n\n"),
    ("json_url", '{"url": "https://example.com/api/v2/items?id=42&sort=desc", "ok": true, "tags": ["a",'),
    ("markdown", "# Pancake recipe\n\n## Ingredients\n\n1. 200 g flour\n2. 2 eggs\n3."),
    ("quotes", "She said: \"I'm sure you'll love it—won't you?\" He'd replied… 'Yes!' and then"),
]


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# SmolLM2's raw prompts minus its ChatML ones (they name SmolLM), plus Qwen's chat and fill-in-the-middle.
QWEN_CODER_PROMPTS: list[tuple[str, str]] = [(n, t) for n, t in PROMPTS if "<|im_start|>" not in t] + [
    ("qwen_chat", f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                  "Write a Python function that checks whether a number is prime.<|im_end|>\n<|im_start|>assistant\n"),
    ("fim", "<|fim_prefix|>def mean(xs):\n    <|fim_suffix|>\n    return total / len(xs)\n<|fim_middle|>"),
    ("rust", "fn main() {\n    let v: Vec<i32> = (1..=10).collect();\n    let sum: i32 = v.iter()"),
    ("sql", "SELECT c.name, COUNT(o.id) AS orders\nFROM customers c\nLEFT JOIN orders o ON o.customer_id = c.id\n"),
    ("shell", "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.log; do\n  gzip -9 \"$f\"\n"),
]

# Teacher forcing over a text neither implementation wrote: llama.cpp's argmax at every position.
CODE_TEXT = '''import heapq
from collections import defaultdict


def dijkstra(graph: dict[str, list[tuple[str, float]]], start: str) -> dict[str, float]:
    """Shortest distances from start to every reachable node (non-negative edge weights)."""
    dist = defaultdict(lambda: float("inf"))
    dist[start] = 0.0
    queue = [(0.0, start)]
    while queue:
        d, node = heapq.heappop(queue)
        if d > dist[node]:
            continue  # a stale entry: a shorter path was found after it was queued
        for neighbour, weight in graph.get(node, []):
            candidate = d + weight
            if candidate < dist[neighbour]:
                dist[neighbour] = candidate
                heapq.heappush(queue, (candidate, neighbour))
    return dict(dist)


if __name__ == "__main__":
    roads = {"a": [("b", 7), ("c", 9), ("f", 14)], "b": [("c", 10), ("d", 15)], "c": [("d", 11), ("f", 2)]}
    print(dijkstra(roads, "a"))
'''


@dataclass(frozen=True)
class Recipe:
    """What to record for one catalog model."""

    out: Path
    prompts: list[tuple[str, str]]
    add_bos: bool  # as the file's metadata asks (tokenizer.ggml.add_bos_token)
    text: str | None = None  # a text to teacher-force through llama.cpp, or None


DATA = REPO / "tests" / "data"
RECIPES: dict[str, Recipe] = {
    "smollm2-135m": Recipe(DEFAULT_OUT, PROMPTS, add_bos=False),
    "qwen2.5-coder-0.5b": Recipe(DATA / "qwen_coder_0.5b_llamacpp_reference.json", QWEN_CODER_PROMPTS,
                                 add_bos=False, text=CODE_TEXT),
    "qwen2.5-coder-1.5b": Recipe(DATA / "qwen_coder_1.5b_llamacpp_reference.json", QWEN_CODER_PROMPTS,
                                 add_bos=False, text=CODE_TEXT),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def greedy_continuation(llm, prompt_ids: list[int], n: int) -> list[int]:
    """Argmax of the logits, token by token; the KV cache is cleared first so prompts don't mix."""
    import numpy as np

    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def argmax_at_every_position(llm, ids: list[int]) -> list[int]:
    """llama.cpp's argmax after each token of `ids`, in one batch (the KV cache cleared first)."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return [int(np.argmax(llm.scores[i])) for i in range(len(ids))]


def record_recipe(model_path: Path, recipe: Recipe) -> dict:
    import llama_cpp

    # logits_all: llama-cpp-python only copies logits into `scores` when it is on.
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=N_CTX, n_threads=N_THREADS,
                          n_threads_batch=N_THREADS, seed=SEED, logits_all=True, verbose=False)
    prompts = []
    for name, text in recipe.prompts:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=recipe.add_bos, special=True)
        prompts.append({"name": name, "text": text, "prompt_ids": ids,
                        "continuation_ids": greedy_continuation(llm, ids, CONTINUATION_TOKENS)})
        print(f"{name:11s} {len(ids):3d} prompt ids -> "
              f"{llm.detokenize(prompts[-1]['continuation_ids']).decode('utf-8', 'replace')!r}")
    data = {
        "model": model_path.name,
        "model_sha256": sha256_of(model_path),
        "llama_cpp_python_version": llama_cpp.__version__,
        "settings": {"n_ctx": N_CTX, "n_threads": N_THREADS, "seed": SEED, "decoding": "greedy argmax",
                     "continuation_tokens": CONTINUATION_TOKENS, "add_bos": recipe.add_bos, "special": True},
        "prompts": prompts,
    }
    if recipe.text is not None:
        ids = llm.tokenize(recipe.text.encode("utf-8"), add_bos=recipe.add_bos, special=True)
        data["teacher_forced_text"] = {"text": recipe.text, "ids": ids,
                                       "argmax_ids": argmax_at_every_position(llm, ids)}
        print(f"teacher-forced text: {len(ids)} tokens")
    return data


def record(model_path: Path) -> dict:
    return record_recipe(model_path, RECIPES["smollm2-135m"])


def run_cli(argv: list[str] | None, description: str, catalog_name: str, default_out: Path, record_fn) -> int:
    """The command line both reference scripts share: a model path (default: pull from the catalog) -> JSON."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model", nargs="?", help=f"the GGUF (default: pull {catalog_name})")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)

    if args.model:
        model_path = Path(args.model)
    else:
        import macllm  # noqa: F401  (OpenBLAS before anything loads MLX)
        from macllm.hub import pull

        model_path = pull(catalog_name)
    data = record_fn(model_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # --catalog is read first: the recipe it picks sets run_cli's defaults (the model to pull, --out).
    choose = argparse.ArgumentParser(add_help=False)
    choose.add_argument("--catalog", choices=sorted(RECIPES), default="smollm2-135m")
    chosen, rest = choose.parse_known_args(argv)
    recipe = RECIPES[chosen.catalog]
    return run_cli(rest, __doc__.split("\n")[0], chosen.catalog, recipe.out, lambda path: record_recipe(path, recipe))


if __name__ == "__main__":
    sys.exit(main())
