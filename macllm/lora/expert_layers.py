"""LoRASwitchLinear: a mixture-of-experts projection plus named adapter slots, one low-rank pair per expert.

    y = base(x, indices) + sum_i scale_i * (x A_i[e]) B_i[e]    for each row's chosen experts e

mlx-lm's trainer puts LoRA on the experts of MoE models by default (its LoRASwitchLinear), so a Qwen3-MoE
or Mixtral adapter made with `mlx_lm.lora` carries per-expert pairs. They are applied with the same
gather matmuls as the experts themselves: no loop over experts. Slots work as in LoRALinear.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.lora.layers import AdapterSlots, base_dims


class LoRASwitchLinear(nn.Module):
    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear
        self._slots = AdapterSlots()

    @property
    def dims(self) -> tuple[int, int]:
        return base_dims(self.linear)

    def add_slot(self, name: str, a: mx.array, b: mx.array) -> None:
        """a (experts, in, rank), b (experts, rank, out)."""
        self._slots.loaded[name] = (a, b)

    def remove_slot(self, name: str) -> None:
        self._slots.loaded.pop(name, None)

    @property
    def slot_names(self) -> list[str]:
        return list(self._slots.loaded)

    def activate(self, scales: dict[str, float]) -> None:
        self._slots.activate(scales)

    @property
    def active_arrays(self) -> list[mx.array]:
        return [] if self._slots.active is None else list(self._slots.active[:2])

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        y = self.linear(x, indices, sorted_indices=sorted_indices)
        active = self._slots.active
        if active is None:
            return y
        a, b, scale = active
        z = mx.gather_mm(x, a, rhs_indices=indices, sorted_indices=sorted_indices)
        z = mx.gather_mm(z, b, rhs_indices=indices, sorted_indices=sorted_indices)
        if scale != 1.0:
            z = scale * z
        return y + z.astype(x.dtype)
