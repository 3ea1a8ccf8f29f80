"""--grad-checkpoint: each decoder layer keeps only its input for the backward pass and recomputes
its activations there (less memory for longer sequences, about a third more compute).

The LoRA pairs are handed to mx.checkpoint explicitly: arrays a checkpointed function merely
captures would get no gradient.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.lora.layers import LoRALinear


class _Hidden:
    """Keeps the wrappers out of the module tree (they are already in it, under the layer)."""

    def __init__(self, items):
        self.items = items


class RecomputedLayer(nn.Module):
    def __init__(self, layer: nn.Module, wrappers: list[LoRALinear]):
        super().__init__()
        self.layer = layer
        self._hidden = _Hidden(wrappers)

    def __call__(self, x, mask, cache):
        wrappers = self._hidden.items
        actives = [w._slots.active for w in wrappers]
        arrays = [array for a, b, _ in actives for array in (a, b)]

        def inner(arrays, x):
            for i, (w, (_, _, scale)) in enumerate(zip(wrappers, actives, strict=True)):
                w.set_trainable_slot(arrays[2 * i], arrays[2 * i + 1], scale)
            return self.layer(x, mask, cache)

        return mx.checkpoint(inner)(arrays, x)


def checkpoint_layers(model: nn.Module, wrappers_by_layer: dict[int, list[LoRALinear]]) -> None:
    layers = model.model.layers
    for i, layer in enumerate(layers):
        layers[i] = RecomputedLayer(layer, wrappers_by_layer.get(i, []))
