#!/usr/bin/env python3
"""Mixture-of-experts projections on the CPU: our kernel (gather_quantized_matmul) vs MLX's mx.gather_qmm,
same packed experts, one run. Not a test: prints the times and the ratio.

    .venv/bin/python scripts/bench_experts.py [--experts 128] [--top-k 8] [--hidden 2048] [--inter 768]
                                              [--bits 4] [--group-size 64] [--tokens 1,64]

The default shape is one Qwen3-30B-A3B expert block (gate, up and down of 128 experts, 8 per token).
One token is decode; many tokens take the sorted layout (rows grouped by expert), as the model does.
No real MoE checkpoint is available offline, so this is the layer alone with random weights.
"""

from __future__ import annotations

import argparse
import os
import time

import macllm  # noqa: F401  (OpenBLAS before MLX)

# isort: split
import mlx.core as mx

from macllm import cpu_kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--tokens", default="1,64")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not cpu_kernels.handles_experts():
        raise SystemExit(f"our CPU kernel is not available: {cpu_kernels.build_status}")
    mx.random.seed(0)
    e, d, f, bits, gs = args.experts, args.hidden, args.inter, args.bits, args.group_size
    mats = {}
    for name, (n, k) in {"gate": (f, d), "up": (f, d), "down": (d, f)}.items():
        mats[name] = mx.quantize(mx.random.normal((e, n, k)) * 0.02, group_size=gs, bits=bits)
        mx.eval(mats[name])

    def ours(x, idx, _sorted):
        g = cpu_kernels.gather_quantized_matmul(x, *mats["gate"], idx, gs, bits)
        u = cpu_kernels.gather_quantized_matmul(x, *mats["up"], idx, gs, bits)
        return cpu_kernels.gather_quantized_matmul(g * mx.sigmoid(g) * u, *mats["down"], idx, gs, bits)

    def theirs(x, idx, is_sorted):
        def proj(h, name):
            w, s, b = mats[name]
            return mx.gather_qmm(h, w, s, b, rhs_indices=idx, transpose=True, group_size=gs, bits=bits,
                                 sorted_indices=is_sorted)
        g, u = proj(x, "gate"), proj(x, "up")
        return proj(g * mx.sigmoid(g) * u, "down")

    print(f"experts {e} x (gate, up {f}x{d}; down {d}x{f}), {bits}-bit g{gs}, top-{args.top_k}; "
          f"load {os.getloadavg()[0]:.1f}, kernel {cpu_kernels.build_status}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        if tokens == 1:
            x = mx.random.normal((1, 1, 1, d))
            idx = mx.random.permutation(e)[: args.top_k].reshape(1, args.top_k).astype(mx.uint32)
            is_sorted = False
        else:
            idx = mx.sort(mx.random.randint(0, e, (tokens * args.top_k,))).astype(mx.uint32)
            x = mx.random.normal((tokens * args.top_k, 1, d))
            is_sorted = True
        mx.eval(x, idx)
        diff = mx.abs(ours(x, idx, is_sorted) - theirs(x, idx, is_sorted)).max().item()
        best = {}
        for _ in range(args.repeats):
            for label, fn in (("ours", ours), ("mx.gather_qmm", theirs)):
                t = time.perf_counter()
                mx.eval(fn(x, idx, is_sorted))
                best[label] = min(best.get(label, 1e9), time.perf_counter() - t)
        mine, peer = best["ours"], best["mx.gather_qmm"]
        print(f"{tokens:>4} token(s): ours {mine * 1e3:8.2f} ms   mx.gather_qmm {peer * 1e3:8.2f} ms"
              f"   ratio {peer / mine:.1f}x   max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
