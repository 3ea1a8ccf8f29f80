"""LoRALinear: a base linear layer (float or quantized) plus named adapter slots.

    y = base(x) + sum_i scale_i * (x A_i) B_i

The base weights are never modified. Slots live outside the module's parameter tree (a plain Python
object), so loading an adapter does not change `model.parameters()` and swapping adapters only
replaces a few array references. With no active slot the layer costs one Python branch.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.cpu_kernels.layers import KernelQuantizedLinear
from macllm.kernels import lora_delta


class AdapterSlots:
    """Loaded (A, B) pairs by adapter name, and the precomputed active delta."""

    def __init__(self):
        self.loaded: dict[str, tuple[mx.array, mx.array]] = {}
        # Active delta as (A, B, scale): A (in x R), B (R x out). One adapter keeps its own A/B and
        # scale (the same arithmetic as mlx-lm); several are stacked along the rank axis with the
        # scales folded into B, so a blend costs two matmuls whatever the count.
        self.active: tuple[mx.array, mx.array, float] | None = None

    def activate(self, scales: dict[str, float]) -> None:
        """Make exactly these slots active (names without a slot here are skipped; scale 0 = off).

        The rank axis is A's last and B's second-to-last, for plain (in x R, R x out) and per-expert
        (E x in x R, E x R x out) pairs alike."""
        pairs = [(self.loaded[n], s) for n, s in scales.items() if s != 0 and n in self.loaded]
        if not pairs:
            self.active = None
        elif len(pairs) == 1:
            (a, b), s = pairs[0]
            self.active = (a, b, float(s))
        else:
            a = mx.concatenate([a for (a, _), _ in pairs], axis=-1)
            b = mx.concatenate([b * s for (_, b), s in pairs], axis=-2)
            self.active = (a, b, 1.0)


def is_quantized(layer: nn.Module) -> bool:
    """nn.QuantizedLinear, or a quantized expert layer (ours or mlx-lm's): packed weight plus scales."""
    return isinstance(layer, nn.QuantizedLinear) or ("scales" in layer and hasattr(layer, "bits"))


def is_expert_layer(layer: nn.Module) -> bool:
    """A mixture-of-experts projection (our or mlx-lm's SwitchLinear): one (experts, out, in) weight,
    called as layer(x, indices)."""
    weight = layer.get("weight") if isinstance(layer, nn.Module) else None
    return isinstance(weight, mx.array) and weight.ndim == 3


def base_dims(linear: nn.Module) -> tuple[int, int]:
    """(input dims, output dims) of a linear or expert layer, float or quantized."""
    out_dims, in_dims = linear.weight.shape[-2:]
    if is_quantized(linear):
        in_dims = in_dims * 32 // linear.bits
    return in_dims, out_dims


def compute_dtype(linear: nn.Module) -> mx.Dtype:
    return linear.scales.dtype if is_quantized(linear) else linear.weight.dtype


class SlottedLayer(nn.Module):
    """A base layer plus named adapter slots: what LoRALinear and the experts' LoRASwitchLinear share."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear
        self._slots = AdapterSlots()

    @property
    def dims(self) -> tuple[int, int]:
        return base_dims(self.linear)

    def add_slot(self, name: str, a: mx.array, b: mx.array) -> None:
        self._slots.loaded[name] = (a, b)

    def remove_slot(self, name: str) -> None:
        self._slots.loaded.pop(name, None)

    @property
    def slot_names(self) -> list[str]:
        return list(self._slots.loaded)

    def activate(self, scales: dict[str, float]) -> None:
        """Make exactly these slots active (names without a slot here are skipped; scale 0 = off)."""
        self._slots.activate(scales)

    @property
    def active_arrays(self) -> list[mx.array]:
        return [] if self._slots.active is None else list(self._slots.active[:2])


class LoRALinear(SlottedLayer):
    def __init__(self, linear: nn.Module, dropout: float = 0.0):
        super().__init__(linear)
        self.dropout = dropout  # applied only in training mode

    def set_trainable_slot(self, a: mx.array, b: mx.array, scale: float) -> None:
        """Training: the arrays being differentiated become the active delta."""
        self._slots.active = (a, b, scale)

    def kernel_operands(self) -> tuple | None:
        """The base layer's kernel operands with the active delta (KernelQuantizedLinear.kernel_operands), or
        None where the kernel does not compute this layer (another base, or training)."""
        # Called for every projection of every layer per decode step: indexing the module dict skips nn.Module's
        # Python-level __getattr__ (self.linear, twice, was most of this method's time).
        linear = self["linear"]
        if self.training or not isinstance(linear, KernelQuantizedLinear):
            return None
        base = linear.kernel_operands()
        active = self._slots.active
        if base is None or active is None:
            return base
        a, b, scale = active
        return (*base[:4], a, b, scale, *base[7:])

    # --- compute -----------------------------------------------------------------------------
    def __call__(self, x: mx.array) -> mx.array:
        active = self._slots.active
        if active is not None and not self.training and isinstance(self.linear, KernelQuantizedLinear):
            a, b, scale = active  # base and delta in one CPU kernel call (docs/kernels.md)
            return self.linear.with_lora(x, a, b, scale)
        y = self.linear(x)
        if active is None:
            return y
        a, b, scale = active
        if self.training:
            # Gradients flow through the reference only (custom kernels have no VJP).
            if self.dropout > 0:
                x = nn.Dropout(self.dropout)(x)
            return lora_delta.reference(y, x, a, b, scale)
        return lora_delta.apply(y, x, a, b, scale)
