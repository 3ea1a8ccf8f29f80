#!/usr/bin/env python3
"""Aggregate decode throughput of OpenAI-compatible servers under 1, 2, 4 and 8 concurrent requests: `macllm
serve` vs `mlx_lm.server` vs llama.cpp's server (llama-cpp-python[server]), same weights, one run, interleaved.
Not a test: prints a table with the ratios, the load average, and a JSON summary.

    MACLLM_HOME=~/.cache/macllm-test .venv/bin/python scripts/bench_server.py [--model smollm2-135m]
        [--levels 1,2,4,8] [--max-tokens 64] [--rounds 2] [--servers macllm,mlx-lm,llama.cpp]

Each server runs in its own process on a loopback port. mlx-lm gets the GGUF written as an mlx-lm folder with the
same quantized weights; llama.cpp and macllm read the GGUF itself. Every request is a greedy /v1/completions of
`--max-tokens` after a prompt of its own (prompts differ from the first token, so no server reuses another
request's prefix); tok/s = completion tokens reported in `usage`, summed over the concurrent requests, divided by
the wall time from the first request sent to the last answer received. Levels run in order, the servers
interleaved within each level, so a change in machine load hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

# Written for this benchmark: varied prose, so prompts tokenize like real text.
OPENINGS = ["The harbour town woke slowly.", "Rain had fallen for three days.", "Nobody expected the letter.",
            "At the top of the hill stood a mill.", "The train was late again.", "She counted the steps twice.",
            "Every map of the valley was wrong.", "The old radio still worked."]
STORY = (" Fishing boats came in with the tide, gulls argued over the nets, and the baker on Quay Street opened at six "
         "as she had for thirty-one years. Write what happened next, in plain sentences:")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, model_field: str):
        self.name, self.cmd, self.port, self.model_field = name, cmd, port, model_field
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not come up in {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far, all its threads (Linux /proc); what a busy shared
        machine distorts least, unlike wall time."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def complete(self, prompt: str, max_tokens: int) -> int:
        body = {"model": self.model_field, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        r = httpx.post(self.url + "/v1/completions", json=body, timeout=600)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])


def one_round(server: Server, concurrency: int, max_tokens: int, round_: int) -> tuple[int, float]:
    """`concurrency` requests at once; (completion tokens, wall seconds from the first sent to the last answer)."""
    counts = [0] * concurrency
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            prompt = OPENINGS[(i + round_) % len(OPENINGS)] + f" (request {i})" + STORY
            counts[i] = server.complete(prompt, max_tokens)
        except BaseException as e:  # reported, never silently counted as zero tokens
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{type(errors[0]).__name__}: {errors[0]}")
    return sum(counts), wall


def measure(server: Server, concurrency: int, max_tokens: int, rounds: int) -> dict:
    tokens, wall = 0, 0.0
    cpu0 = server.cpu_seconds()
    for round_ in range(rounds):
        try:
            n, seconds = one_round(server, concurrency, max_tokens, round_)
        except RuntimeError as e:
            return {"error": str(e)}
        tokens, wall = tokens + n, wall + seconds
    cpu = server.cpu_seconds() - cpu0
    return {"tokens": tokens, "seconds": wall, "tok_s": tokens / wall, "cpu_s": cpu, "tok_per_cpu_s": tokens / cpu}


def step_costs(gguf: Path, widths: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """Median (wall, CPU) seconds of one batched decode step (macllm's engine path, no HTTP) for each batch width,
    the widths interleaved within each repeat so load drift hits them alike. Each sequence has a 64-token cache of
    its own. CPU time (all threads of this process) is what a busy shared machine distorts least; with OpenBLAS
    threads spinning it overstates, so run with OPENBLAS_NUM_THREADS=1 for the cleanest per-token cost."""
    import statistics

    import mlx.core as mx

    from macllm.cache import make_cache, trim_cache
    from macllm.cache.rows import row_caches
    from macllm.loader import load_model

    lm = load_model(str(gguf), progress=False)
    caches = []
    for i in range(max(widths)):
        cache = make_cache(lm.model)
        ids = lm.tokenizer.encode(OPENINGS[i % len(OPENINGS)] + STORY)[:64]
        mx.eval(lm.model(mx.array(ids)[None], cache=cache, last_only=True))
        caches.append(cache)
    times: dict[int, list[float]] = {w: [] for w in widths}
    cpu: dict[int, list[float]] = {w: [] for w in widths}
    for _ in range(repeats):
        for width in widths:
            tokens = mx.array([[17]] * width)
            t0, c0 = time.perf_counter(), time.process_time()
            mx.eval(lm.model(tokens, cache=row_caches(caches[:width])))
            times[width].append(time.perf_counter() - t0)
            cpu[width].append(time.process_time() - c0)
            for cache in caches[:width]:
                trim_cache(cache, 1)
    return {w: (statistics.median(times[w]), statistics.median(cpu[w])) for w in widths}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or .gguf path")
    ap.add_argument("--levels", default="1,2,4,8", help="concurrent requests per level, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="repeats per level and server (summed)")
    ap.add_argument("--servers", default="macllm,mlx-lm,llama.cpp")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    ap.add_argument("--step-repeats", type=int, default=15,
                    help="repeats of the in-process batched decode step timing (0: skip it)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    wanted = args.servers.split(",")

    import macllm  # noqa: F401  (OpenBLAS before MLX)
    from macllm.formats.mlx_folder import save_mlx_folder
    from macllm.hub import resolve_model
    from macllm.loader import read_model_files

    gguf = resolve_model(args.model)
    if args.step_repeats:
        costs = step_costs(gguf, levels, args.step_repeats)
        print(f"macllm decode step, batched, in-process (median of {args.step_repeats}; load {load_average()}):")
        base_wall, base_cpu = costs[levels[0]]
        for width, (wall, cpu) in costs.items():
            print(f"  {width} sequences: wall {wall * 1000:7.1f} ms/step = {width / wall:6.1f} tok/s, CPU "
                  f"{cpu * 1000:7.1f} ms/step; per token {wall / width / (base_wall / levels[0]):.2f}x (wall) "
                  f"{cpu / width / (base_cpu / levels[0]):.2f}x (CPU) the cost at {levels[0]}")
    python = sys.executable
    servers: list[Server] = []
    if "macllm" in wanted:
        port = free_port()
        servers.append(Server("macllm", [python, "-m", "macllm.cli", "serve", "--model", str(gguf), "--port",
                                         str(port)], port, "ignored-by-macllm"))
        servers[-1].model_field = None  # type: ignore[assignment]  (macllm: the loaded model)
    if "mlx-lm" in wanted:
        cfg, weights, tokenizer, _ = read_model_files(gguf)
        folder = save_mlx_folder(cfg, weights, tokenizer, Path(tempfile.mkdtemp(prefix="bench-server-")) / "mlx")
        del weights
        port = free_port()
        servers.append(Server("mlx-lm", [python, "-m", "mlx_lm", "server", "--model", str(folder), "--port",
                                         str(port), "--log-level", "WARNING"], port, str(folder)))
    if "llama.cpp" in wanted:
        port = free_port()
        servers.append(Server("llama.cpp", [python, "-m", "llama_cpp.server", "--model", str(gguf), "--port",
                                            str(port), "--n_ctx", "4096", "--n_threads", str(args.threads)],
                              port, str(gguf)))

    results: dict[str, dict[int, dict]] = {s.name: {} for s in servers}
    loads = []
    try:
        for s in servers:
            s.start()
            s.complete(OPENINGS[0], 8)  # warm-up: first-request costs stay out of the figures
        for level in levels:
            loads.append(load_average())
            for s in servers:
                results[s.name][level] = measure(s, level, args.max_tokens, args.rounds)
                r = results[s.name][level]
                shown = f"{r['tok_s']:.1f} tok/s" if "tok_s" in r else r["error"]
                print(f"  {s.name:10} x{level}: {shown}  (load {load_average()})", file=sys.stderr, flush=True)
    finally:
        for s in servers:
            s.stop()

    print(f"model {gguf.name}, greedy /v1/completions, {args.max_tokens} new tokens per request, "
          f"{args.rounds} rounds per level; load average at each level: {', '.join(loads)}")
    header = f"{'server':12}" + "".join(f"{f'x{n} tok/s':>13}" for n in levels) + f"{'x{0}/x1'.format(levels[-1]):>9}"
    print(header)
    for name, per_level in results.items():
        cells = "".join(f"{per_level[n]['tok_s']:13.1f}" if "tok_s" in per_level[n] else f"{'error':>13}"
                        for n in levels)
        first, last = per_level[levels[0]], per_level[levels[-1]]
        scale = f"{last['tok_s'] / first['tok_s']:9.2f}" if "tok_s" in first and "tok_s" in last else f"{'':9}"
        print(f"{name:12}{cells}{scale}")
    print("tokens per CPU-second of the server process (robust to machine load; with OPENBLAS_NUM_THREADS=1 and "
          "--threads 1 no thread spins):")
    for name, per_level in results.items():
        cells = "".join(f"{per_level[n]['tok_per_cpu_s']:13.1f}" if "tok_s" in per_level[n] else f"{'error':>13}"
                        for n in levels)
        print(f"{name:12}{cells}")
    if "macllm" in results:
        for peer in (p for p in results if p != "macllm"):
            ratios = []
            for n in levels:
                ours, theirs = results["macllm"][n], results[peer][n]
                ratios.append(f"x{n} {ours['tok_s'] / theirs['tok_s']:.2f}" if "tok_s" in ours and "tok_s" in theirs
                              else f"x{n} -")
            print(f"macllm / {peer}: " + ", ".join(ratios))
    print(json.dumps({"model": gguf.name, "max_tokens": args.max_tokens, "rounds": args.rounds, "load": loads,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
