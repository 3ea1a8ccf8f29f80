"""Making an adapter swap all-or-nothing: after a failure part-way, every layer goes back to one known set."""

from __future__ import annotations

from macllm.errors import MacllmError
from macllm.lora.manager import AdapterManager

# activate() skips a set equal to the one it records; a record no clean set equals forces a full rewrite.
_STALE = {"(partly swapped)": 0.0}


def swap(manager: AdapterManager, scales: dict[str, float]) -> bool:
    """Activate `scales`; returns whether what the model computes changed (so KV caches are stale).

    A MacllmError is a refusal before any layer changed. Any other failure may have left some layers on the
    new set: the previous set (or, failing that, none) is put back on every layer before it is re-raised,
    and the caller must treat KV caches as stale."""
    previous = dict(manager.active)
    try:
        return manager.activate(scales)
    except MacllmError:
        raise
    except BaseException:
        restore(manager, previous)
        raise


def restore(manager: AdapterManager, wanted: dict[str, float]) -> None:
    try:
        manager.active = dict(_STALE)
        manager.activate(wanted)
    except BaseException:
        manager.active = dict(_STALE)
        manager.activate({})  # the base model: no slot to combine, nothing left to fail
