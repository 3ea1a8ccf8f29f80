#!/usr/bin/env python3
"""Our CPU quantized matmul per activation-row count: float32 activations vs int8 (AVX-512 VNNI).

    .venv/bin/python scripts/bench_rows.py [--threads N] [--rounds R]

For 1, 2, 4 and 8 rows of x it times one evaluation of a Qwen2.5-Coder-0.5B-shaped MLP's matrices
(gate and up 4864x896, down 896x4864, random weights; 4-bit group 32 and 64, 5- and 8-bit group 32) on the
float kernel and on the int8 kernel, alternating the two in every round so that load on a shared
machine hits both alike, and prints Gweights/s (weights read per second, best round) and the ratio.
`--threads 1` (the default) measures CPU time of one thread, which load distorts least; more
threads measure wall time. Not a test: prints a table and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def timed(clock, xs, mats, group_size: int, bits: int) -> float:
    """Seconds of `clock` for one evaluation of every matrix times its activations."""
    import mlx.core as mx

    from macllm import cpu_kernels

    outs = [cpu_kernels.quantized_matmul(x, w, s, b, group_size, bits) for x, (w, s, b) in zip(xs, mats, strict=True)]
    t = clock()
    mx.eval(outs)
    return clock() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="kernel threads (1: CPU time; more: wall time)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    os.environ["MACLLM_CPU_THREADS"] = str(args.threads)  # read when the pool starts: before any call

    import mlx.core as mx

    from macllm import cpu_kernels

    ext = cpu_kernels.extension
    if ext is None or not ext.int8_available():
        sys.exit(f"bench_rows: needs the CPU kernel with AVX-512 VNNI ({cpu_kernels.build_status})")
    clock = time.process_time if args.threads == 1 else time.perf_counter
    shapes = [(4864, 896), (4864, 896), (896, 4864)]
    print(f"kernel {ext.isa()} x {ext.threads()} thread(s), {'CPU' if args.threads == 1 else 'wall'} time, "
          f"best of {args.rounds}; load average {os.getloadavg()[0]:.2f} before")
    print(f"{'weights':<14}{'rows':>5}{'float Gw/s':>12}{'int8 Gw/s':>11}{'int8/float':>12}")
    for bits, group_size in ((4, 32), (4, 64), (5, 32), (8, 32)):
        mx.random.seed(0)
        mats = [mx.quantize(mx.random.normal(s) * 0.05, group_size=group_size, bits=bits) for s in shapes]
        mx.eval(mats)
        weights = sum(n * k for n, k in shapes)
        for rows in (1, 2, 4, 8):
            xs = [mx.random.normal((rows, k)) for _, k in shapes]
            mx.eval(xs)
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.rounds):
                for int8 in (False, True):
                    ext.set_int8(int8)
                    best[int8] = min(best[int8], timed(clock, xs, mats, group_size, bits))
            gw = {k: weights / v / 1e9 for k, v in best.items()}
            ratio = gw[True] / gw[False]
            print(f"{bits}-bit g{group_size:<7}{rows:>5}{gw[False]:>12.2f}{gw[True]:>11.2f}{ratio:>11.2f}x")
    ext.set_int8(False)
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
