"""LoRALinear: a base linear layer (float or quantized) plus named adapter slots.

    y = base(x) + sum_i scale_i * (x A_i) B_i

The base weights are never modified. Slots live outside the module's parameter tree (a plain Python
object), so loading an adapter does not change `model.parameters()` and swapping adapters only
replaces a few array references. With no active slot the layer costs one Python branch.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.kernels import lora_delta


class _Slots:
    """Loaded (A, B) pairs by adapter name, and the precomputed active delta."""

    def __init__(self):
        self.loaded: dict[str, tuple[mx.array, mx.array]] = {}
        # Active delta as (A, B, scale): A (in x R), B (R x out). One adapter keeps its own A/B and
        # scale (the same arithmetic as mlx-lm); several are stacked along the rank axis with the
        # scales folded into B, so a blend costs two matmuls whatever the count.
        self.active: tuple[mx.array, mx.array, float] | None = None


def base_dims(linear: nn.Module) -> tuple[int, int]:
    """(input dims, output dims) of nn.Linear or nn.QuantizedLinear."""
    out_dims, in_dims = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        in_dims = in_dims * 32 // linear.bits
    return in_dims, out_dims


def compute_dtype(linear: nn.Module) -> mx.Dtype:
    return linear.scales.dtype if isinstance(linear, nn.QuantizedLinear) else linear.weight.dtype


class LoRALinear(nn.Module):
    def __init__(self, linear: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.linear = linear
        self.dropout = dropout  # applied only in training mode
        self._slots = _Slots()

    @property
    def dims(self) -> tuple[int, int]:
        return base_dims(self.linear)

    # --- slots -------------------------------------------------------------------------------
    def add_slot(self, name: str, a: mx.array, b: mx.array) -> None:
        self._slots.loaded[name] = (a, b)

    def remove_slot(self, name: str) -> None:
        self._slots.loaded.pop(name, None)

    @property
    def slot_names(self) -> list[str]:
        return list(self._slots.loaded)

    def activate(self, scales: dict[str, float]) -> None:
        """Make exactly these slots active (names without a slot here are skipped; scale 0 = off)."""
        pairs = [(self._slots.loaded[n], s) for n, s in scales.items() if s != 0 and n in self._slots.loaded]
        if not pairs:
            self._slots.active = None
        elif len(pairs) == 1:
            (a, b), s = pairs[0]
            self._slots.active = (a, b, float(s))
        else:
            a = mx.concatenate([a for (a, _), _ in pairs], axis=1)
            b = mx.concatenate([b * s for (_, b), s in pairs], axis=0)
            self._slots.active = (a, b, 1.0)

    @property
    def active_arrays(self) -> list[mx.array]:
        return [] if self._slots.active is None else list(self._slots.active[:2])

    def set_trainable_slot(self, a: mx.array, b: mx.array, scale: float) -> None:
        """Training: the arrays being differentiated become the active delta."""
        self._slots.active = (a, b, scale)

    # --- compute -----------------------------------------------------------------------------
    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        active = self._slots.active
        if active is None:
            return y
        a, b, scale = active
        if self.training:
            # Gradients flow through the reference only (custom kernels have no VJP).
            if self.dropout > 0:
                x = nn.Dropout(self.dropout)(x)
            return lora_delta.reference(y, x, a, b, scale)
        return lora_delta.apply(y, x, a, b, scale)
