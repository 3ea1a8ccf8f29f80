"""Our CPU quantized matmul for MLX (C++ in csrc/, built by scripts/build_kernels.sh; docs/kernels.md).

The extension `_cpu_quant` computes `x @ dequantize(w)^T` on MLX's affine packing (2, 3, 4, 5, 6 and 8 bits,
group sizes 32, 64, 128) with AVX-512, AVX2 or NEON row kernels split over a persistent thread pool.
This module imports it if it was built and says why not otherwise: macllm then runs on the paths it
had before (float32 when the model fits, else MLX's own quantized matmul).

MACLLM_CPU_KERNEL=auto (default) uses it on the CPU when built; `off` keeps today's paths, which is
also how to get the float32 fast path back. MACLLM_CPU_INT8 (auto, on, off) chooses whether quantized
layers compute on int8 activations where the CPU has AVX-512 VNNI and VBMI (docs/kernels.md); `auto`
follows INT8_BY_DEFAULT.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import mlx.core as mx

from macllm.errors import MacllmError

ENV = "MACLLM_CPU_KERNEL"
MODES = ("auto", "off")
INT8_ENV = "MACLLM_CPU_INT8"
INT8_MODES = ("auto", "on", "off")
# Whether `auto` means int8 activations where the CPU can (docs/benchmarks.md, "Int8 activations", has the
# figures this rests on).
INT8_BY_DEFAULT = True
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
MAX_GROUPS = 4096  # per row: the kernels keep a row's scales on the stack (csrc/qmm_kernels.h)
# Written by scripts/build_kernels.sh when the build fails: the one-line reason `doctor` shows.
BUILD_FAILURE = Path(__file__).resolve().parents[2] / "build" / "cpu_kernels" / "FAILED"


# What the module provides (csrc/bindings.cpp); one absent means it predates these sources.
OPS = ("quantized_matmul", "quantized_matmul_lora", "quantized_matmul_transposed", "gather_quantized_matmul",
       "rms_norm", "residual_rms_norm", "rotate_heads", "attend", "causal_softmax", "silu_mul", "set_int8",
       "decoder_layer", "choose_token")


def _import() -> tuple[ModuleType | None, str]:
    try:
        from macllm.cpu_kernels import _cpu_quant  # type: ignore[attr-defined]
    except ImportError as e:
        if BUILD_FAILURE.is_file():
            reason = BUILD_FAILURE.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return None, f"build failed: {reason[0] if reason else 'see build/cpu_kernels/build.log'}"
        if "_cpu_quant" in str(e) and "cannot import name" in str(e):
            return None, "not built (scripts/setup.sh builds it: needs a C++ compiler and cmake)"
        return None, f"cannot be loaded ({str(e).splitlines()[0][:160]})"
    # A failed rebuild leaves the module built from older sources: all of it or none of it is used.
    missing = [name for name in OPS if not hasattr(_cpu_quant, name)]
    if missing:
        return None, f"built from older sources, without {missing[0]} (scripts/setup.sh rebuilds it)"
    return _cpu_quant, f"built, {_cpu_quant.isa()} x {_cpu_quant.threads()} threads"


extension, build_status = _import()


def mode() -> str:
    raw = os.environ.get(ENV, "")
    value = raw.strip().lower() or "auto"
    if value not in MODES:
        raise MacllmError(f"{ENV}={raw!r} is not valid: use one of {', '.join(MODES)}")
    return value


def int8_mode() -> str:
    raw = os.environ.get(INT8_ENV, "")
    value = raw.strip().lower() or "auto"
    if value not in INT8_MODES:
        raise MacllmError(f"{INT8_ENV}={raw!r} is not valid: use one of {', '.join(INT8_MODES)}")
    return value


def apply_int8() -> bool:
    """Switches the kernel's int8 activations per MACLLM_CPU_INT8; returns whether they are on."""
    if extension is None:
        return False
    value = int8_mode()
    if value == "on" and not extension.int8_available():
        raise MacllmError(f"{INT8_ENV}=on needs a CPU with AVX-512 VNNI and VBMI, which this one lacks: "
                          "use auto or off")
    on = extension.int8_available() and (value == "on" or (value == "auto" and INT8_BY_DEFAULT))
    extension.set_int8(on)
    return on


def int8_active() -> bool:
    """Whether quantized layers compute on int8 activations right now."""
    return extension is not None and extension.int8()


def summary() -> str:
    """What the kernel runs on, for the model's compute line: e.g. `avx512 x 2 threads, int8 activations`."""
    line = build_status.removeprefix("built, ")
    return f"{line}, int8 activations" if int8_active() else line


def status() -> tuple[bool, str]:
    """(whether quantized layers on the CPU use our kernel, one line saying why or why not)."""
    if extension is None:
        return False, build_status
    if mode() == "off":
        return False, f"{ENV}=off ({build_status})"
    if mx.default_device() != mx.cpu:
        return False, f"the default device is the GPU ({build_status})"
    if apply_int8():
        return True, f"{build_status}, int8 activations (AVX-512 VNNI, {INT8_ENV})"
    return True, build_status


def enabled() -> bool:
    return status()[0]


def handles(bits: int, group_size: int, mode: str, in_dims: int) -> bool:
    """Whether the kernel computes a layer with this quantization (else MLX's op runs it)."""
    return (extension is not None and mode == "affine" and bits in BITS and group_size in GROUP_SIZES
            and in_dims % group_size == 0 and in_dims // group_size <= MAX_GROUPS)


def quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, group_size: int,
                     bits: int) -> mx.array:
    """`mx.quantized_matmul(x, w, scales, biases, transpose=True, group_size, bits)` on our kernel."""
    assert extension is not None, build_status
    return extension.quantized_matmul(x, w, scales, biases, group_size, bits)


def gather_quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, indices: mx.array,
                            group_size: int, bits: int) -> mx.array:
    """`mx.gather_qmm(x, w, scales, biases, rhs_indices=indices, transpose=True, ...)` on our kernel: each row of
    x through the quantized matrix of the expert its index names (mixture-of-experts layers)."""
    assert extension is not None, build_status
    return extension.gather_quantized_matmul(x, w, scales, biases, indices, group_size, bits)


def quantized_matmul_lora(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array, a: mx.array, b: mx.array,
                          scale: float, group_size: int, bits: int) -> mx.array:
    """`quantized_matmul(...) + scale * (x @ a) @ b` as one node: an adapter on a kernel-backed layer costs
    one op per projection instead of four or five small MLX ops (their overhead dominated on the CPU)."""
    assert extension is not None, build_status
    return extension.quantized_matmul_lora(x, w, scales, biases, a, b, scale, group_size, bits)
