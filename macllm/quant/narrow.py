"""Re-quantize a loaded model's wider layers to 4 bits, in place: for a speculative-decoding draft.

A draft only proposes tokens and the main model checks every one, so its precision moves how many guesses
are kept, never what is generated; what it must be is cheap. A decode step reads every weight once, so a
draft stored at 5, 6 or 8 bits (Qwen2.5-Coder-0.5B's GGUF is mostly 5-bit, its tied head 8-bit) costs that
much more per guess than at 4. The layers keep their class, group size and scale dtype.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

DRAFT_BITS = 4


def narrow_to_bits(model: nn.Module, bits: int = DRAFT_BITS) -> int:
    """Re-quantizes every affine quantized linear or embedding layer stored wider than `bits`; returns the
    number of bytes of weights, scales and biases saved."""
    saved = 0
    for _, layer in model.named_modules():
        if not isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        if getattr(layer, "mode", "affine") != "affine" or layer.bits <= bits:
            continue
        before = sum(layer[k].nbytes for k in ("weight", "scales", "biases"))
        dense = mx.dequantize(layer["weight"], layer["scales"], layer["biases"], group_size=layer.group_size,
                              bits=layer.bits)
        weight, scales, biases = mx.quantize(dense, group_size=layer.group_size, bits=bits)
        mx.eval(weight, scales, biases)  # one layer's float copy at a time
        layer.update({"weight": weight, "scales": scales, "biases": biases})
        layer.bits = bits
        saved += before - sum(a.nbytes for a in (weight, scales, biases))
    return saved
