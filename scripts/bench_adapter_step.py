#!/usr/bin/env python3
"""What one live adapter costs a decode step, measured in a way a busy machine disturbs less than tok/s.

    MACLLM_HOME=~/.cache/macllm-test .venv/bin/python scripts/bench_adapter_step.py [--rounds 20]
    MACLLM_CPU_THREADS=1 ... scripts/bench_adapter_step.py   # CPU work without the pool's spinning

Two copies of SmolLM2-135M after a 128-token prefill: one bare, one with a random rank-8 adapter on all seven
projections of every layer loaded (0 active, then 1 active). Each round times 20 steps of each configuration
in turn (interleaved, so load from elsewhere falls on all three alike); prints the median wall and CPU
(process_time: all threads) milliseconds per step and the ratios. With one kernel thread the CPU time is the
work a step does (no worker spins waiting for the next product), the least load-sensitive figure here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import macllm  # noqa: F401  (OpenBLAS before MLX)

# isort: split
import mlx.core as mx

from macllm.cache import make_cache
from macllm.generation.steps import prefill
from macllm.hub import resolve_model
from macllm.loader import load_model
from macllm.lora.manager import AdapterManager
from macllm.lora.random_adapter import random_adapter


def stepper(model):
    """One greedy decode step at a fixed cache length (the cache's offset is put back after each)."""
    cache = make_cache(model)
    mx.eval(prefill(model, list(range(100, 228)), cache))
    token = mx.array([[200]])

    def step():
        mx.eval(mx.argmax(model(token, cache=cache)[:, -1, :], axis=-1))
        for c in cache:
            c.offset -= 1

    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    source = str(resolve_model(args.model, progress=False))
    bare = load_model(source, progress=False)
    adapted = load_model(source, progress=False)
    manager = AdapterManager(adapted.model, adapted.config)
    manager.load(random_adapter(adapted.config, "a0", rank=8, seed=0, b_std=0.02))
    bare_step, adapted_step = stepper(bare.model), stepper(adapted.model)
    configs = {"bare": (bare_step, None), "0 active": (adapted_step, {}), "1 active": (adapted_step, {"a0": 1.0})}
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for label, (step, active) in configs.items():
            if active is not None:
                manager.activate(active)
            step()  # the first step after a switch pays nothing the others do not
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(20):
                step()
            cpu[label].append((time.process_time() - c0) / 20 * 1e3)
            wall[label].append((time.perf_counter() - w0) / 20 * 1e3)
    for name, figures in (("wall", wall), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in figures.items()}
        print(f"{name} ms/step: " + " / ".join(f"{k} {v:.2f}" for k, v in med.items())
              + f"; 1 active vs 0: {100 * (med['1 active'] / med['0 active'] - 1):+.1f}%"
              + f", 0 active vs bare: {100 * (med['0 active'] / med['bare'] - 1):+.1f}%")
    print(f"kernel threads {os.environ.get('MACLLM_CPU_THREADS', 'all cores')}; load average {load_before:.2f} -> "
          f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
