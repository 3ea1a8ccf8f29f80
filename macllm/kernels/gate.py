"""Per kernel, once per process: the Metal kernel or its pure-MLX reference, and why (docs/kernels.md).

MACLLM_KERNELS=auto (the default): on Metal, the first time a kernel would run, it is compared with its
reference on small inputs of every supported dtype; a build error or a mismatch means the reference
from then on, announced by one line on stderr. `on`: the kernel without that comparison (a build
error still means the reference). `off`: the references. Without Metal every mode means the reference.

The decision is made lazily inside `apply`, i.e. on the thread that runs the kernel (MLX streams
belong to their thread: when generating, the engine thread). Kernel modules only ask `use_kernel`;
what a check runs is registered by the package (macllm/kernels/__init__.py), so nothing here imports
a kernel. `metal_available` and the registered probes are module attributes a test may replace.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import mlx.core as mx

from macllm.errors import MacllmError

METAL = "metal"
REFERENCE = "reference"
UNDECIDED = "undecided"
ENV = "MACLLM_KERNELS"
MODES = ("auto", "on", "off")

# Runs one kernel on small inputs of every supported dtype; with compare=True also its reference.
# Returns None when they agree (or were not compared), else one line on what differed; raises when
# the kernel cannot be built or run (Metal compile errors surface as RuntimeError at evaluation).
Probe = Callable[[bool], Optional[str]]


@dataclass(frozen=True)
class Decision:
    path: str  # METAL or REFERENCE
    reason: str
    fell_back: bool = False  # Metal was there but the kernel failed: worth a warning


def metal_available() -> bool:
    """Whether MLX has a Metal device in this process."""
    return bool(mx.metal.is_available())


def kernels_mode() -> str:
    """MACLLM_KERNELS, validated: auto (default), on or off."""
    raw = os.environ.get(ENV, "")
    mode = raw.strip().lower() or "auto"
    if mode not in MODES:
        raise MacllmError(f"{ENV}={raw!r} is not valid: use one of {', '.join(MODES)}")
    return mode


def _one_line(error: BaseException, limit: int = 200) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decide(mode: str, has_metal: bool, probe: Probe) -> Decision:
    """The choice for one kernel; runs the probe only on Metal and not when the mode is off."""
    if not has_metal:
        return Decision(REFERENCE, "no Metal")
    if mode == "off":
        return Decision(REFERENCE, f"{ENV}=off")
    try:
        mismatch = probe(mode == "auto")
    except Exception as e:  # any failure to build or run the kernel: the reference is always safe
        return Decision(REFERENCE, f"kernel failed to build or run ({_one_line(e)})", fell_back=True)
    if mismatch and mode == "auto":
        return Decision(REFERENCE, f"self-check mismatch ({mismatch})", fell_back=True)
    if mode == "on":
        return Decision(METAL, f"{ENV}=on: compiled, self-check skipped")
    return Decision(METAL, "self-check passed")


# --- the per-process registry ------------------------------------------------------------------
PROBES: dict[str, Probe] = {}
_decisions: dict[str, Decision] = {}
_lock = threading.RLock()
_local = threading.local()


def register(name: str, probe: Probe) -> None:
    PROBES[name] = probe


def _decide_once(name: str) -> Decision:
    with _lock:  # two threads meeting a kernel at once: one check, one warning
        decision = _decisions.get(name)
        if decision is None:
            decision = decide(kernels_mode(), metal_available(), PROBES[name])
            _decisions[name] = decision
            if decision.fell_back:
                print(f"macllm: warning: kernel {name} uses the reference: {decision.reason}", file=sys.stderr)
        return decision


def use_kernel(name: str) -> bool:
    """Whether `apply` should run the Metal kernel `name` (decided on the first call, on this thread)."""
    if getattr(_local, "references_only", False):
        return False
    decision = _decisions.get(name) or _decide_once(name)
    return decision.path == METAL


@contextmanager
def references_only() -> Iterator[None]:
    """On this thread, every `apply` takes its reference and no check runs (e.g. while tracing a
    training step: custom kernels have no gradient)."""
    before = getattr(_local, "references_only", False)
    _local.references_only = True
    try:
        yield
    finally:
        _local.references_only = before


def status() -> dict[str, tuple[str, str]]:
    """Kernel name -> (path, reason), without running any check: a kernel whose check has not run yet
    (Metal, auto or on, not used so far) reads (UNDECIDED, ...)."""
    out = {}
    for name in PROBES:
        decision = _decisions.get(name)
        if decision is None:
            if not metal_available():
                decision = Decision(REFERENCE, "no Metal")
            elif kernels_mode() == "off":
                decision = Decision(REFERENCE, f"{ENV}=off")
            else:
                decision = Decision(UNDECIDED, "checked when first used")
        out[name] = (decision.path, decision.reason)
    return out


def decide_all() -> dict[str, tuple[str, str]]:
    """Make every decision now, on this thread (what `macllm doctor` shows), and return status()."""
    for name in PROBES:
        use_kernel(name)
    return status()


def forget() -> None:
    """Drop the decisions (tests; after changing MACLLM_KERNELS in a running process)."""
    with _lock:
        _decisions.clear()
