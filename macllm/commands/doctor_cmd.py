"""`macllm doctor`: what this machine will run on, in one screen."""

from __future__ import annotations

import json
import platform
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="show backend, device, BLAS, MLX version, memory, cache location")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--kernels", action="store_true",
                   help="check every fused kernel (reference vs formula, kernel vs reference) and time them")
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
        "compute_path": compute_path(metal),
        "memory_gb": round(backend.total_memory_bytes() / (1 << 30), 1),
        "float32_budget_gb": round(backend.float32_budget_bytes() / (1 << 30), 1),
        "macllm_home": str(macllm_home()),
        "model_cache": str(models_dir()),
        "prompt_cache": prompt_cache_line(),
        "architectures": architectures_line(),
        "kernels": kernel_paths(),
        "cpu_kernel": cpu_kernel_line(),
    }


def prompt_cache_line() -> str:
    """Where the prompt cache lives, what it holds and its cap (`macllm cache list` shows the files)."""
    from macllm.errors import MacllmError
    from macllm.prompt_cache import PromptCache
    from macllm.prompt_cache.limit import resolve_mb

    store = PromptCache(limit_bytes=0)  # only listed: the cap is read below, where a bad one is said
    entries = store.entries(with_headers=False)
    try:
        mb = resolve_mb()
        cap = "off" if mb == 0 else f"cap {mb} MiB"
    except MacllmError as e:
        cap = str(e)
    files = f"{len(entries)} file" + ("" if len(entries) == 1 else "s")
    return f"{store.folder}: {files}, {sum(e.size for e in entries) / 2**20:.1f} MiB ({cap})"


def architectures_line() -> str:
    """Which model types run on our own code and that the rest go through mlx-lm (read without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    from macllm.models.implementation import OWN, mlx_lm_architectures

    own = "own: " + ", ".join(OWN)
    try:
        mlx_lm = f"mlx-lm {version('mlx-lm')}"
    except PackageNotFoundError:
        return f"{own}; mlx-lm is not installed, so no others"
    others = [a for a in mlx_lm_architectures() if a not in OWN]
    return f"{own}; {len(others)} others through {mlx_lm}'s model classes (`macllm models` shows IMPL)"


def compute_path(metal: bool) -> str:
    from macllm import cpu_kernels
    from macllm.errors import MacllmError

    if metal:
        return "weights as stored (quantized) on the GPU"
    try:
        kernel = cpu_kernels.enabled()
    except MacllmError:
        kernel = False
    if kernel:
        return "weights as stored (quantized) through our CPU kernel (MACLLM_CPU_KERNEL=off: float32)"
    return "float32 when the model fits the memory budget (--keep-quantized opts out)"


def cpu_kernel_line() -> str:
    """Whether quantized layers on the CPU run on our kernel (macllm/cpu_kernels), and why, in one line."""
    from macllm import cpu_kernels
    from macllm.errors import MacllmError

    try:
        used, reason = cpu_kernels.status()
    except MacllmError as e:
        return str(e)
    return f"{'in use' if used else 'not used'}: {reason}"


def kernel_paths() -> dict[str, dict[str, str]] | str:
    """Kernel -> the path `apply` takes in this process and why (runs the self-checks on Metal), or
    the one-line error when MACLLM_KERNELS is invalid."""
    from macllm.errors import MacllmError
    from macllm.kernels import decide_all

    try:
        return {name: {"path": path, "reason": reason} for name, (path, reason) in decide_all().items()}
    except MacllmError as e:
        return str(e)


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "ok" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.{digits}e}" if 0 < abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def run_kernels(args) -> int:
    from macllm.kernels import selfcheck

    report = selfcheck.run_all()
    if args.json:
        print(json.dumps(report))
        return 0 if report["ok"] else 1
    if report["note"]:
        print(report["note"])
    cols = [("kernel", "kernel"), ("dtype", "dtype"), ("path", "path"), ("reference_ok", "ref vs formula"),
            ("parity_ok", "kernel vs ref"), ("reference_us", "ref us"), ("kernel_us", "kernel us"),
            ("speedup", "speedup")]
    table = [[h for _, h in cols]] + [[_fmt(r[k]) for k, _ in cols] for r in report["rows"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    why = {r["kernel"]: (r["path"], r["why"]) for r in report["rows"]}
    for name, (path, reason) in why.items():
        print(f"{name}: {path} ({reason})")
    for note in report["known_differences"]:
        print(f"note: {note}")
    print("all checks passed" if report["ok"] else "some checks FAILED")
    return 0 if report["ok"] else 1


def run(args) -> int:
    if getattr(args, "kernels", False):
        return run_kernels(args)
    info = collect()
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        label = key.replace("_", " ").ljust(width)
        if isinstance(value, dict):  # kernels: one line each, "name: path (reason)"
            for i, (name, entry) in enumerate(value.items()):
                print(f"{label if i == 0 else ' ' * width}  {name}: {entry['path']} ({entry['reason']})")
        else:
            print(f"{label}  {value}")
    return 0
