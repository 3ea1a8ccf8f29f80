"""LoRASwitchLinear: a mixture-of-experts projection plus named adapter slots, one low-rank pair per expert.

    y = base(x, indices) + sum_i scale_i * (x A_i[e]) B_i[e]    for each row's chosen experts e

mlx-lm's trainer puts LoRA on the experts of MoE models by default (its LoRASwitchLinear), so a Qwen3-MoE
or Mixtral adapter made with `mlx_lm.lora` carries per-expert pairs. They are applied with the same
gather matmuls as the experts themselves: no loop over experts. Slots work as in LoRALinear.
"""

from __future__ import annotations

import mlx.core as mx

from macllm.lora.layers import SlottedLayer


class LoRASwitchLinear(SlottedLayer):
    """Slots hold (experts, in, rank) / (experts, rank, out) pairs."""

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
