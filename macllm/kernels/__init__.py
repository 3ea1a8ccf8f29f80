"""Fused Metal kernels for the decode hot paths, each next to a pure-MLX reference (docs/kernels.md).

Every kernel module has `reference(...)` (runs anywhere, defines the semantics), `metal(...)` (builds
the mx.fast.metal_kernel on first use through `get_kernel`) and `apply(...)`: the kernel when the
input is one it handles and the gate (gate.py) chose it for this process, else the reference.
"""

from __future__ import annotations

from macllm.kernels import gate, lora_delta, parity, residual_rms_norm, sample_filter
from macllm.kernels.gate import decide_all, forget, references_only, status

KERNELS = {
    "lora_delta": lora_delta,
    "sample_filter": sample_filter,
    "residual_rms_norm": residual_rms_norm,
}

for _name in KERNELS:
    gate.register(_name, parity.probe(_name))


__all__ = ["KERNELS", "decide_all", "forget", "references_only", "status"]
