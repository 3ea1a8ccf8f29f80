#!/usr/bin/env python3
"""Prefill and decode speed: macllm vs mlx-lm (and llama.cpp if llama-cpp-python is installed),
same weights, one run. Not a test: prints a table, the ratios, and a JSON summary.

    .venv/bin/python scripts/bench.py [--model smollm2-135m] [--prompt-tokens 256] [--gen-tokens 128]
                                      [--repeats 2] [--with-mlx-qmm]

Each engine runs in its own subprocess (its own MLX state and memory peak). The peer mlx-lm gets the
GGUF converted to an mlx-lm folder with the same quantized weights. Every worker loads OpenBLAS first
(it only matters for float32 matmuls, which only our fast path uses).

macllm runs as users get it (on the CPU: the stored weights through our CPU kernel when it is built,
docs/kernels.md, with int8 activations by default where the CPU has AVX-512 VNNI) and on the float32 fast
path (MACLLM_CPU_KERNEL=off), plus the kernel on the activations the default does not use on a VNNI CPU:
"macllm float act" (MACLLM_CPU_INT8=off) or "macllm int8" (=on); --with-mlx-qmm adds the stored
weights through MLX's own quantized matmul (slow on the CPU). With --repeats N the engines run N rounds,
interleaved (all engines once, then again), and each engine's best round is reported: on a shared
machine the best round is the one least disturbed. The load average is printed with the figures, and
"weights GB/s" is the bytes of quantized weights one decoded token reads times decode tok/s, and "of limit"
that as a share of the machine's read bandwidth, measured first (numpy sums over 1 GiB, one thread per
core). A worker killed by a signal is reported as a crash (llama.cpp's AMX path does that on some Xeons:
the message says how to build it without).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
    llm = llama_cpp.Llama(model_path=args.model_path, n_ctx=1024, n_threads=os.cpu_count() or 2, n_batch=512,
                          verbose=False)
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


# llama.cpp's AMX path segfaults on some Xeons (llama.cpp issue 20824); its AVX-512 build is the peer there.
LLAMA_CPP_CRASH_HINT = (
    "; on a CPU with AMX, rebuild llama-cpp-python without it: CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON "
    "-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON "
    "-DGGML_AVX512_BF16=ON -DGGML_AMX_INT8=OFF\" pip install --force-reinstall --no-deps --no-cache-dir "
    "llama-cpp-python")


def run_worker(name: str, model_path: str, ids_file: Path, gen_tokens: int, keep_quantized=False,
               env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model-path", model_path, "--ids", str(ids_file),
           "--gen-tokens", str(gen_tokens)]
    if keep_quantized:
        cmd.append("--keep-quantized")
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode < 0:  # killed by a signal: a crash says nothing on stderr
        hint = LLAMA_CPP_CRASH_HINT if name == "llama.cpp" else ""
        return {"error": f"crashed (signal {-out.returncode}){hint}"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def read_bandwidth_gb_s(threads: int, gib: float = 1.0, rounds: int = 4) -> float:
    """The machine's memory read bandwidth: `threads` numpy sums over parts of one array far larger than
    the caches (numpy releases the GIL while it sums), best of `rounds`."""
    import numpy as np

    data = np.ones(int(gib * (1 << 30)) // 8, dtype=np.uint64)
    parts = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t)
    return data.nbytes / best / 1e9


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def quantized_weight_bytes(weights: dict) -> int:
    """Bytes of the quantized matrices (packed values, scales, biases) a decode step reads once each; the
    embedding table counts only when it is also the LM head (tied), as only one row of it is read otherwise."""
    tied = "lm_head.weight" not in weights
    total = 0
    for name, value in weights.items():
        prefix = name.rsplit(".", 1)[0]
        if f"{prefix}.scales" not in weights or ("embed" in prefix and not tied):
            continue
        total += value.nbytes
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or .gguf path")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; each engine's best is kept")
    ap.add_argument("--no-float32", action="store_true",
                    help="skip macllm's float32 fast path (it holds 4 bytes per parameter: 7 GB for 1.5B)")
    ap.add_argument("--with-mlx-qmm", action="store_true",
                    help="also run macllm on MLX's own CPU quantized matmul (slow)")
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
    weight_bytes = quantized_weight_bytes(weights)
    del weights

    off = {"MACLLM_CPU_KERNEL": "off"}
    engines = {  # label -> (worker, model path, keep_quantized, env)
        "macllm": ("ours", gguf, False, None),
        "macllm float32": ("ours", gguf, False, off),
        "mlx-lm": ("mlx-lm", peer_folder, False, None),
    }
    if args.no_float32:
        del engines["macllm float32"]
    if args.with_mlx_qmm:
        engines["macllm MLX qmm"] = ("ours", gguf, True, off)
    from macllm import cpu_kernels

    if cpu_kernels.extension is not None and cpu_kernels.extension.int8_available():
        # The activations the default does not use on this CPU (docs/kernels.md).
        if cpu_kernels.INT8_BY_DEFAULT:
            engines["macllm float act"] = ("ours", gguf, False, {"MACLLM_CPU_INT8": "off"})
        else:
            engines["macllm int8"] = ("ours", gguf, False, {"MACLLM_CPU_INT8": "on"})
    try:
        import llama_cpp  # noqa: F401

        engines["llama.cpp"] = ("llama.cpp", gguf, False, None)
    except ImportError:
        pass

    threads = os.cpu_count() or 2
    bandwidth = read_bandwidth_gb_s(threads)
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    loads = [load_average()]
    for _ in range(max(1, args.repeats)):
        for name, (worker, path, keep, env) in engines.items():
            rounds[name].append(run_worker(worker, str(path), ids_file, args.gen_tokens, keep, env))
        loads.append(load_average())
    runs = {}
    for name, results in rounds.items():
        good = [r for r in results if "error" not in r]
        runs[name] = max(good, key=lambda r: r["decode_tps"]) if good else results[-1]
        runs[name]["rounds_decode_tps"] = [round(r.get("decode_tps", 0.0), 1) for r in results]

    peer, cpp = runs["mlx-lm"], runs.get("llama.cpp", {"error": "not installed"})
    print(f"model {gguf.name}, prompt {len(ids)} tokens, {args.gen_tokens} new tokens, greedy, "
          f"best of {max(1, args.repeats)} interleaved round(s)")
    print(f"load average (1/5/15 min) before and after each round: {' | '.join(loads)}")
    limit = bandwidth * 1e9 / weight_bytes
    print(f"quantized weights read per decoded token: {weight_bytes / 1e6:.0f} MB; the machine reads "
          f"{bandwidth:.1f} GB/s with {threads} threads, so decode's limit is {limit:.0f} tok/s")
    print(f"{'engine':16} {'prefill tok/s':>14} {'decode tok/s':>13} {'weights GB/s':>13} {'of limit':>9} "
          f"{'peak MB':>9} {'vs mlx-lm (prefill/decode)':>28} {'decode vs llama.cpp':>20}")
    for name, r in runs.items():
        if "error" in r:
            print(f"{name:16} error: {r['error']}")
            continue
        ratio = cpp_ratio = ""
        if "error" not in peer:
            r["prefill_vs_mlx_lm"] = r["prefill_tps"] / peer["prefill_tps"]
            r["decode_vs_mlx_lm"] = r["decode_tps"] / peer["decode_tps"]
            ratio = f"{r['prefill_vs_mlx_lm']:.2f}x / {r['decode_vs_mlx_lm']:.2f}x"
        if "error" not in cpp:
            r["decode_vs_llama_cpp"] = r["decode_tps"] / cpp["decode_tps"]
            cpp_ratio = f"{r['decode_vs_llama_cpp']:.2f}x"
        r["weights_gb_s"] = weight_bytes * r["decode_tps"] / 1e9
        r["of_bandwidth_limit"] = r["weights_gb_s"] / bandwidth
        print(f"{name:16} {r['prefill_tps']:14.1f} {r['decode_tps']:13.1f} {r['weights_gb_s']:13.1f} "
              f"{r['of_bandwidth_limit']:9.0%} {r['peak_memory_mb']:9.0f} {ratio:>28} {cpp_ratio:>20}")
    print(json.dumps({"model": gguf.name, "prompt_tokens": len(ids), "gen_tokens": args.gen_tokens,
                      "weight_bytes": weight_bytes, "read_bandwidth_gb_s": bandwidth, "load_average": loads,
                      "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
