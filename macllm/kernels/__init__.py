"""Fused Metal kernels for the decode hot paths, each next to a pure-MLX reference (docs/kernels.md).

Every kernel module has `reference(...)` (runs anywhere, defines the semantics), `metal(...)` (builds
the mx.fast.metal_kernel on first use) and `apply(...)` (the kernel on Metal, else the reference).
"""

from __future__ import annotations

from macllm.kernels import lora_delta, residual_rms_norm, sample_filter
from macllm.kernels._common import metal_enabled, set_metal_enabled

KERNELS = {
    "lora_delta": lora_delta,
    "sample_filter": sample_filter,
    "residual_rms_norm": residual_rms_norm,
}


def kernels_available() -> bool:
    """Whether `apply` runs the Metal kernels in this process."""
    return metal_enabled()


def paths() -> dict[str, str]:
    """Kernel name -> the path `apply` takes here: "metal" or "reference"."""
    path = "metal" if metal_enabled() else "reference"
    return {name: path for name in KERNELS}


__all__ = ["KERNELS", "kernels_available", "paths", "set_metal_enabled"]
