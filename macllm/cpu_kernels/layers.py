"""Quantized layers computed by our CPU kernel: same parameters and result as MLX's, other arithmetic.

`use_cpu_kernel(model)` switches every nn.QuantizedLinear and nn.QuantizedEmbedding (whose `as_linear`
is the tied LM head) that the kernel handles to the subclasses below, in place: the instance keeps its
parameters, only its class changes. Building new layers instead would quantize random weights first
(nn.QuantizedLinear's constructor does), which costs load time for nothing. LoRA wrappers keep working:
they hold the same instance and test isinstance(…, nn.QuantizedLinear).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from macllm.cpu_kernels import (
    gather_quantized_matmul,
    handles,
    quantized_matmul,
    quantized_matmul_lora,
)


class KernelQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        y = quantized_matmul(x, self["weight"], self["scales"], self["biases"], self.group_size, self.bits)
        if "bias" in self:
            y = y + self["bias"]
        return y

    def with_lora(self, x: mx.array, a: mx.array, b: mx.array, scale: float) -> mx.array:
        """self(x) + scale * (x @ a) @ b (LoRALinear's inference path on this base)."""
        y = quantized_matmul_lora(x, self["weight"], self["scales"], self["biases"], a, b, scale, self.group_size,
                                  self.bits)
        if "bias" in self:
            y = y + self["bias"]
        return y


    def kernel_operands(self) -> tuple | None:
        """What the decoder-layer op needs to compute this layer: (w, scales, biases, bias, a, b, lora_scale,
        group_size, bits), without an adapter here."""
        return (self["weight"], self["scales"], self["biases"], self.get("bias"), None, None, 0.0, self.group_size,
                self.bits)


class KernelQuantizedEmbedding(nn.QuantizedEmbedding):
    def __call__(self, x: mx.array) -> mx.array:
        # The looked-up rows in float32 (MLX's layer gives the scales' dtype, e.g. float16): the CPU path
        # computes in float32, and a float16 embedding would round every hidden state once more.
        f32 = mx.float32
        return mx.dequantize(self["weight"][x], self["scales"][x].astype(f32), self["biases"][x].astype(f32),
                             group_size=self.group_size, bits=self.bits)

    def as_linear(self, x: mx.array) -> mx.array:
        return quantized_matmul(x, self["weight"], self["scales"], self["biases"], self.group_size, self.bits)


def expert_projection(layer: nn.Module, x: mx.array, indices: mx.array) -> mx.array:
    """A quantized mixture-of-experts projection (ours or mlx-lm's QuantizedSwitchLinear) on our kernel."""
    y = gather_quantized_matmul(x, layer["weight"], layer["scales"], layer["biases"], indices, layer.group_size,
                                layer.bits)
    if "bias" in layer:  # mlx-lm's experts may carry a bias per expert and output
        y = y + mx.expand_dims(layer["bias"][indices], -2)
    return y


_KERNEL_CLASS: dict[type, type] = {nn.QuantizedLinear: KernelQuantizedLinear,
                                   nn.QuantizedEmbedding: KernelQuantizedEmbedding}


def register_kernel_class(layer_class: type, kernel_class: type) -> None:
    """A model family's own quantized layer and its kernel-backed subclass (e.g. the MoE experts)."""
    _KERNEL_CLASS[layer_class] = kernel_class


def _mlx_lm_experts_class(layer_class: type) -> type | None:
    """mlx-lm's QuantizedSwitchLinear (the experts of the architectures it runs for us), switched to our kernel
    by a subclass made the first time one is met (importing mlx-lm here would cost every start ~2 s)."""
    if layer_class.__name__ != "QuantizedSwitchLinear" or not layer_class.__module__.startswith("mlx_lm."):
        return None
    if layer_class not in _KERNEL_CLASS:
        def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
            return expert_projection(self, x, indices)

        _KERNEL_CLASS[layer_class] = type("KernelQuantizedSwitchLinear", (layer_class,), {"__call__": __call__})
    return _KERNEL_CLASS[layer_class]


def use_cpu_kernel(model: nn.Module) -> int:
    """Switch the quantized layers the kernel handles to it; returns how many were switched."""
    switched = 0
    for _, module in model.named_modules():
        kernel_class = _KERNEL_CLASS.get(type(module)) or _mlx_lm_experts_class(type(module))
        if kernel_class is None or module.get("biases") is None:
            continue
        in_dims = module["weight"].shape[-1] * 32 // module.bits
        if handles(module.bits, module.group_size, getattr(module, "mode", "affine"), in_dims):
            module.__class__ = kernel_class
            switched += 1
    return switched
