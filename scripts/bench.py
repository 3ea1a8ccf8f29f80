#!/usr/bin/env python3
"""Prefill and decode speed: macllm vs mlx-lm (and llama.cpp if llama-cpp-python is installed),
same weights, one run. Not a test: prints a table, the ratios, and a JSON summary.

    .venv/bin/python scripts/bench.py [--model smollm2-135m] [--prompt-tokens 256] [--gen-tokens 128]

Each engine runs in its own subprocess (its own MLX state and memory peak). The peer mlx-lm gets the
GGUF converted to an mlx-lm folder with the same quantized weights. Every worker loads OpenBLAS first
(it only matters for float32 matmuls, which only our fast path uses).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Written for this benchmark: varied prose so the prompt tokenizes like real text.
PARAGRAPH = (
    "The harbour town woke slowly. Fishing boats came in with the tide, gulls argued over the nets, and the "
    "baker on Quay Street opened at six as she had for thirty-one years. In 1987 a storm took the old pier; "
    "the new one, built of concrete and steel, cost 2.4 million and took three summers to finish. Visitors "
    "now walk its length at sunset, read the plaques about shipwrecks, and eat chips out of paper cones. "
)


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    text = PARAGRAPH
    while len(ids) < n:
        text += PARAGRAPH
        ids = tokenizer.encode(text)
    return ids[:n]


# ---------------------------------------------------------------- workers (one per subprocess)

def worker_ours(args) -> dict:
    import macllm  # noqa: F401  (OpenBLAS before MLX)
    from macllm.generation import GenerationParams, generate
    from macllm.loader import load_model

    t = time.perf_counter()
    lm = load_model(args.model_path, keep_quantized=args.keep_quantized, progress=False)
    load_s = time.perf_counter() - t
    ids = json.loads(Path(args.ids).read_text())
    params = GenerationParams(max_tokens=args.gen_tokens)
    generate(lm.model, lm.tokenizer, ids[:32], GenerationParams(max_tokens=8))  # warm-up
    r = generate(lm.model, lm.tokenizer, ids, params)
    s = r.stats
    return {"prefill_tps": s.prompt_tps, "decode_tps": s.generation_tps, "generated": s.generation_tokens,
            "peak_memory_mb": s.peak_memory_mb, "load_s": load_s, "compute": lm.info.compute}


def worker_mlx_lm(args) -> dict:
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    import macllm  # noqa: F401  (same BLAS as ours)

    t = time.perf_counter()
    model, tokenizer = load(args.model_path)
    load_s = time.perf_counter() - t
    ids = json.loads(Path(args.ids).read_text())
    sampler = make_sampler(temp=0.0)
    for _ in stream_generate(model, tokenizer, mx.array(ids[:32]), max_tokens=8, sampler=sampler):
        pass
    mx.reset_peak_memory()
    last = None
    # Only the last response is kept: it carries the run's totals.
    for last in stream_generate(model, tokenizer, mx.array(ids), max_tokens=args.gen_tokens, sampler=sampler):  # noqa: B007
        pass
    return {"prefill_tps": last.prompt_tps, "decode_tps": last.generation_tps, "generated": last.generation_tokens,
            "peak_memory_mb": last.peak_memory * 1024, "load_s": load_s, "compute": "mlx-lm, weights as stored"}


def worker_llama_cpp(args) -> dict:
    import resource

    import llama_cpp

    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.model_path, n_ctx=1024, n_threads=2, n_batch=512, verbose=False)
    load_s = time.perf_counter() - t
    ids = json.loads(Path(args.ids).read_text())
    llm.eval(ids[:32])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    token = int(max(range(llm.n_vocab()), key=lambda i: llm.scores[llm.n_tokens - 1][i]))
    t1 = time.perf_counter()
    generated = 1
    while generated < args.gen_tokens:
        llm.eval([token])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        generated += 1
    decode_s = time.perf_counter() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"prefill_tps": len(ids) / prefill_s, "decode_tps": (generated - 1) / decode_s, "generated": generated,
            "peak_memory_mb": peak, "load_s": load_s, "compute": "llama.cpp, weights as stored (peak = RSS)"}


WORKERS = {"ours": worker_ours, "mlx-lm": worker_mlx_lm, "llama.cpp": worker_llama_cpp}


def run_worker(name: str, model_path: str, ids_file: Path, gen_tokens: int, keep_quantized=False) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model-path", model_path, "--ids", str(ids_file),
           "--gen-tokens", str(gen_tokens)]
    if keep_quantized:
        cmd.append("--keep-quantized")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or .gguf path")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--keep-quantized", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0

    import macllm  # noqa: F401
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.hub import resolve_model
    from macllm.loader import read_model_files

    gguf = resolve_model(args.model)
    cfg, weights, tokenizer, _ = read_model_files(gguf)
    tmp = Path(tempfile.mkdtemp(prefix="macllm-bench-"))
    peer_folder = save_mlx_folder(cfg, weights, tokenizer, tmp / "mlx-lm-model")
    ids = prompt_ids(tokenizer, args.prompt_tokens)
    ids_file = tmp / "prompt.json"
    ids_file.write_text(json.dumps(ids))
    del weights

    runs = {
        "macllm": run_worker("ours", str(gguf), ids_file, args.gen_tokens),
        "macllm --keep-quantized": run_worker("ours", str(gguf), ids_file, args.gen_tokens, keep_quantized=True),
        "mlx-lm": run_worker("mlx-lm", str(peer_folder), ids_file, args.gen_tokens),
    }
    try:
        import llama_cpp  # noqa: F401

        runs["llama.cpp"] = run_worker("llama.cpp", str(gguf), ids_file, args.gen_tokens)
    except ImportError:
        pass

    peer = runs["mlx-lm"]
    print(f"model {gguf.name}, prompt {len(ids)} tokens, {args.gen_tokens} new tokens, greedy")
    print(f"{'engine':26} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak MB':>9} {'vs mlx-lm (prefill/decode)':>28}")
    for name, r in runs.items():
        if "error" in r:
            print(f"{name:26} error: {r['error']}")
            continue
        ratio = ""
        if "error" not in peer:
            r["prefill_vs_mlx_lm"] = r["prefill_tps"] / peer["prefill_tps"]
            r["decode_vs_mlx_lm"] = r["decode_tps"] / peer["decode_tps"]
            ratio = f"{r['prefill_vs_mlx_lm']:.2f}x / {r['decode_vs_mlx_lm']:.2f}x"
        print(f"{name:26} {r['prefill_tps']:14.1f} {r['decode_tps']:13.1f} {r['peak_memory_mb']:9.0f} {ratio:>28}")
    print(json.dumps({"model": gguf.name, "prompt_tokens": len(ids), "gen_tokens": args.gen_tokens, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
