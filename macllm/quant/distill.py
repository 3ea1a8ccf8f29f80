"""Distilled scales: after quantizing, tune every group's scale and bias (codes fixed) so the quantized
model's next-token distribution matches the float model's on calibration text.

Rounding each matrix well on its own (affine.py) ignores how errors add up through 30 layers; training
the 2 numbers per group against the float model's own predictions (KL divergence) lets later layers'
groups compensate for earlier ones. The student computes in float: each quantized matrix is rebuilt as
codes * scale + bias inside the graph, so gradients reach scales and biases and the matrix products stay
in BLAS (quantized matmuls are slow on CPU). mlx-lm's DWQ trains the same parameters.
"""

from __future__ import annotations

import copy
import math
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_unflatten

from macllm.loader import build_model
from macllm.quant.weights import layer_quantization

SEQUENCE = 512
LEARNING_RATE = 2e-4  # relative: an Adam step moves a group's scale by about 0.02%


class _Rebuilt(nn.Module):
    """Fixed integer codes; each group's scale and bias move relative to where quantization put them:
    scale = s0 * (1 + scale_delta), bias = b0 + s0 * bias_delta. Training the deltas makes one learning
    rate fit 4-bit and 8-bit groups alike (an 8-bit step is 17x finer than a 4-bit one)."""

    def __init__(self, packed: mx.array, scales: mx.array, biases: mx.array, bits: int, group_size: int):
        super().__init__()
        rows, groups = scales.shape
        ones = mx.ones((rows, groups), mx.float32)
        codes = mx.dequantize(packed, ones, mx.zeros_like(ones), group_size=group_size, bits=bits)
        self._codes = codes.reshape(rows, groups, group_size)  # underscore: not a parameter
        self._s0, self._b0 = scales.astype(mx.float32), biases.astype(mx.float32)
        self.scale_delta = mx.zeros_like(self._s0)
        self.bias_delta = mx.zeros_like(self._b0)

    def scales_and_biases(self) -> tuple[mx.array, mx.array]:
        return self._s0 * (1 + self.scale_delta), self._b0 + self._s0 * self.bias_delta

    def matrix(self) -> mx.array:
        rows, groups, size = self._codes.shape
        scales, biases = self.scales_and_biases()
        return (self._codes * scales[..., None] + biases[..., None]).reshape(rows, groups * size)


class RebuiltLinear(_Rebuilt):
    def __call__(self, x):
        return x @ self.matrix().T


class RebuiltEmbedding(_Rebuilt):
    def __call__(self, tokens):
        return self.matrix()[tokens]

    def as_linear(self, x):
        return x @ self.matrix().T


def _student(float_model: nn.Module, qweights: dict, quant: dict) -> nn.Module:
    swaps = []
    for name, module in float_model.named_modules():
        if f"{name}.scales" not in qweights:
            continue
        q = layer_quantization(quant, name)
        cls = RebuiltEmbedding if isinstance(module, nn.Embedding) else RebuiltLinear
        swaps.append((name, cls(qweights[f"{name}.weight"], qweights[f"{name}.scales"],
                                qweights[f"{name}.biases"], q["bits"], q["group_size"])))
    float_model.update_modules(tree_unflatten(swaps))
    float_model.freeze()
    float_model.unfreeze(keys=["scale_delta", "bias_delta"], strict=False)
    return float_model


def _kl(student_logits: mx.array, teacher_logprobs: mx.array) -> mx.array:
    logprobs = student_logits - mx.logsumexp(student_logits, axis=-1, keepdims=True)
    return (mx.exp(teacher_logprobs) * (teacher_logprobs - logprobs)).sum(axis=-1).mean()


def distill_scales(cfg, float_weights: dict, qweights: dict, quant: dict, token_ids: list[int],
                   epochs: int = 2, learning_rate: float = LEARNING_RATE, progress: bool = False) -> dict:
    """qweights with trained scales and biases (same dtype as before); returns a new dict."""
    float_cfg = copy.copy(cfg)
    float_cfg.quantization = None
    teacher, _ = build_model(float_cfg, dict(float_weights))
    student, _ = build_model(float_cfg, dict(float_weights))
    student = _student(student, qweights, quant)
    chunks = [token_ids[i:i + SEQUENCE] for i in range(0, len(token_ids) - 1, SEQUENCE)]
    chunks = [c for c in chunks if len(c) > 1]
    optimizer = optim.Adam(learning_rate=learning_rate)
    loss_and_grad = nn.value_and_grad(student, lambda ids, target: _kl(student(ids), target))
    started, steps = time.perf_counter(), epochs * len(chunks)
    for step in range(steps):
        ids = mx.array(chunks[step % len(chunks)])[None]
        target = teacher(ids)
        target = target - mx.logsumexp(target, axis=-1, keepdims=True)
        loss, grads = loss_and_grad(ids, mx.stop_gradient(target))
        optimizer.update(student, grads)
        mx.eval(student.trainable_parameters(), optimizer.state, loss)
        if progress:
            rate = (step + 1) / (time.perf_counter() - started)
            print(f"\rdistilling scales: step {step + 1}/{steps}, KL {loss.item():.4f}, "
                  f"{math.ceil((steps - step - 1) / rate)} s left   ", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    out = dict(qweights)
    for name, module in student.named_modules():
        if isinstance(module, _Rebuilt):
            scales, biases = module.scales_and_biases()
            out[f"{name}.scales"] = scales.astype(qweights[f"{name}.scales"].dtype)
            out[f"{name}.biases"] = biases.astype(qweights[f"{name}.biases"].dtype)
    return out
