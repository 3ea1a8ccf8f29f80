"""`macllm doctor`: what this machine will run on, in one screen."""

from __future__ import annotations

import json
import platform
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="show backend, device, BLAS, MLX version, memory, cache location")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def collect() -> dict:
    import mlx.core as mx

    from macllm import backend
    from macllm.paths import macllm_home, models_dir

    metal = backend.is_metal()
    return {
        "macllm": __import__("macllm").__version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx": getattr(mx, "__version__", "?"),
        "backend": "metal" if metal else "cpu",
        "device": backend.device_name(),
        "blas": backend.blas_in_use(),
        "compute_path": ("weights as stored (quantized) on the GPU" if metal else
                         "float32 when the model fits the memory budget (--keep-quantized opts out)"),
        "memory_gb": round(backend.total_memory_bytes() / (1 << 30), 1),
        "float32_budget_gb": round(backend.float32_budget_bytes() / (1 << 30), 1),
        "macllm_home": str(macllm_home()),
        "model_cache": str(models_dir()),
    }


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key.replace('_', ' ').ljust(width)}  {value}")
    return 0
