"""Device choice and the CPU fast path.

Import order matters: MLX's Linux CPU wheel links a slow reference BLAS, and loading OpenBLAS with
RTLD_GLOBAL *before* the first `import mlx.core` lets its sgemm win symbol resolution (~80x faster
float32 matmuls). `bootstrap()` does that and is called by `macllm/__init__.py` before anything
imports MLX. Nothing at module level here imports MLX: the functions that need it import it themselves.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

_OPENBLAS_GLOBS = [
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas*.so*",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas*.so*",
    "/usr/lib/*/libopenblas*.so*",
    "/usr/lib64/libopenblas*.so*",
    "/usr/local/lib/libopenblas*.so*",
]
LINUX_BLAS_HINT = "install it with: apt-get install libopenblas0-pthread"

_state: dict = {"booted": False, "blas": None, "late": False, "warned": False}


def _find_openblas() -> str | None:
    override = os.environ.get("MACLLM_OPENBLAS")
    if override:
        return override if os.path.exists(override) else None
    for pattern in _OPENBLAS_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def bootstrap() -> None:
    """Load a fast BLAS globally if we are on Linux and MLX is not imported yet. Idempotent."""
    if _state["booted"]:
        return
    _state["booted"] = True
    if sys.platform == "darwin" or os.environ.get("MACLLM_NO_OPENBLAS"):
        return
    if "mlx.core" in sys.modules:
        # Too late to interpose: MLX already bound its BLAS symbols.
        _state["late"] = True
        return
    path = _find_openblas()
    if path is None:
        return
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        _state["blas"] = path
    except OSError:
        pass


def blas_in_use() -> str:
    if sys.platform == "darwin":
        return "Accelerate (via MLX)"
    if _state["blas"]:
        return f"OpenBLAS ({_state['blas']})"
    if _state["late"]:
        return "reference BLAS (mlx was imported before macllm; import macllm first)"
    return "reference BLAS (slow; " + LINUX_BLAS_HINT + ")"


def warn_if_slow_blas(stream=sys.stderr) -> None:
    """Say once, clearly, that the CPU path is slow without OpenBLAS."""
    if sys.platform == "darwin" or _state["blas"] or _state["warned"]:
        return
    if is_metal():
        return
    _state["warned"] = True
    print(f"macllm: note: OpenBLAS not found, float32 matmuls will be slow; {LINUX_BLAS_HINT}", file=stream)


def is_metal() -> bool:
    import mlx.core as mx

    try:
        return bool(mx.metal.is_available())
    except Exception:
        return False


def device_name() -> str:
    import mlx.core as mx

    if is_metal():
        info = mx.metal.device_info()
        return f"gpu (Metal: {info.get('device_name', 'Apple GPU')})"
    return f"cpu ({os.cpu_count()} cores)"


def total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def float32_budget_bytes() -> int:
    """How much memory the float32 CPU fast path may spend on weights (env override in GiB)."""
    env = os.environ.get("MACLLM_FLOAT32_BUDGET_GB")
    if env:
        return int(float(env) * (1 << 30))
    return int(total_memory_bytes() * 0.4)


def should_compute_float32(param_count: int, keep_quantized: bool) -> bool:
    """On CPU, MLX's quantized matmul is slow (~0.5 Gparam/s): dequantize to float32 when it fits."""
    if keep_quantized or is_metal():
        return False
    return param_count * 4 <= float32_budget_bytes()


def configure_metal() -> None:
    """Wire the model's memory as MLX recommends so macOS does not page it out between tokens."""
    import mlx.core as mx

    if not is_metal():
        return
    limit = mx.metal.device_info().get("max_recommended_working_set_size")
    if limit:
        mx.set_wired_limit(int(limit))


def peak_memory_mb() -> float:
    import mlx.core as mx

    return mx.get_peak_memory() / (1 << 20)


def reset_peak_memory() -> None:
    import mlx.core as mx

    mx.reset_peak_memory()
