#!/usr/bin/env python3
"""Where one decode step's time goes on the CPU kernel path. Not a test: prints one line.

    MACLLM_HOME=~/.cache/macllm-test .venv/bin/python scripts/bench_decode_parts.py [MODEL_PATH]

After a 256-token prefill it times (best of 20): every kernel-backed linear layer in model order as one
evaluation, the LM head alone, building one step's graph in Python (not evaluated), and one step built and
evaluated; and counts the step's graph nodes. Default model: SmolLM2-135M from the catalog.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time

import macllm  # noqa: F401  (OpenBLAS before MLX)

# isort: split
import mlx.core as mx

from macllm.cache import make_cache
from macllm.cpu_kernels.layers import KernelQuantizedLinear
from macllm.generation.steps import prefill
from macllm.hub import resolve_model
from macllm.loader import load_model


def best_ms(fn, rounds: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else str(resolve_model("smollm2-135m", progress=False))
    model = load_model(source, progress=False).model
    cache = make_cache(model)
    mx.eval(prefill(model, list(range(100, 356)), cache))
    token = mx.array([200])
    layers = [m for _, m in model.named_modules() if isinstance(m, KernelQuantizedLinear)]
    inputs = [mx.random.normal((1, 1, m["weight"].shape[1] * 32 // m.bits)) for m in layers]
    mx.eval(inputs)
    hidden = mx.random.normal((1, 1, model.model.norm.weight.shape[0]))
    head = model.lm_head if hasattr(model, "lm_head") else model.model.embed_tokens.as_linear

    def step(evaluate: bool):
        out = mx.argmax(model(token[None], cache=cache)[:, -1, :], axis=-1)
        if evaluate:
            mx.eval(out)
        for c in cache:  # the same cache length every time
            c.offset -= 1

    t_layers = best_ms(lambda: mx.eval([m(x) for m, x in zip(layers, inputs, strict=True)]))
    t_head = best_ms(lambda: mx.eval(head(hidden)))
    t_build = best_ms(lambda: step(False))
    t_step = best_ms(lambda: step(True))
    dot = io.StringIO()
    mx.export_to_dot(dot, model(token[None], cache=cache))
    nodes = len(re.findall(r'label ="', dot.getvalue()))
    print(f"{len(layers)} kernel linear layers {t_layers:.2f} ms; LM head {t_head:.2f} ms; graph building "
          f"{t_build:.2f} ms; one step built and evaluated {t_step:.2f} ms; {nodes} graph nodes per step; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
