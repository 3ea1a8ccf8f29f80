"""Qwen3-MoE: Qwen3's attention with a mixture of experts in place of the MLP on the sparse layers.

A router (`mlp.gate`) scores every expert per token; the top-k are run and their outputs summed,
weighted by the router's softmax (renormalised over the k when `norm_topk_prob`). All experts of one
projection live in one (experts, out, in) array, and each token's k experts are applied by MLX's gather
matmuls (`gather_mm`, `gather_qmm` when quantized): no Python loop over experts or tokens.

Layout and names are mlx-lm's qwen3_moe (`mlp.switch_mlp.{gate,up,down}_proj`); `sanitize` stacks the
per-expert tensors of Hugging Face checkpoints (`mlp.experts.N.gate_proj.weight`) into that layout.
"""

from __future__ import annotations

import re

import mlx.core as mx
import mlx.nn as nn

from macllm.config import ModelConfig, MoEArgs
from macllm.cpu_kernels.layers import expert_projection, register_kernel_class
from macllm.errors import MacllmError
from macllm.models.base import CausalLM
from macllm.models.llama import MLP
from macllm.models.qwen3 import Qwen3Body

# Below this many (token, expert) pairs, sorting them by expert costs more than it saves.
SORT_THRESHOLD = 64

_EXPERT_KEY = re.compile(r"^(.*\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|scales|biases)$")


class SwitchLinear(nn.Module):
    """One bias-free linear layer per expert; each input row goes through the expert its index names."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int):
        super().__init__()
        scale = input_dims ** -0.5
        self.weight = mx.random.uniform(-scale, scale, (num_experts, output_dims, input_dims))

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        """x (..., 1, in) with indices broadcasting against its batch dims -> (..., 1, out)."""
        return mx.gather_mm(x, self.weight.swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices)

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine", **_) -> "QuantizedSwitchLinear":
        """nn.quantize's hook (the loader quantizes like the checkpoint before loading its weights)."""
        return QuantizedSwitchLinear(self.weight, group_size, bits, mode)


class QuantizedSwitchLinear(nn.Module):
    def __init__(self, weight: mx.array, group_size: int, bits: int, mode: str = "affine"):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        # Packed weight (experts, out, in * bits / 32), scales and biases (experts, out, in / group).
        self.weight, self.scales, self.biases = mx.quantize(weight, group_size, bits, mode=mode)
        self.freeze()  # like nn.QuantizedLinear: quantized weights are never trained

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        return mx.gather_qmm(x, self.weight, self.scales, self.biases, rhs_indices=indices, transpose=True,
                             group_size=self.group_size, bits=self.bits, mode=self.mode,
                             sorted_indices=sorted_indices)


class KernelQuantizedSwitchLinear(QuantizedSwitchLinear):
    """The experts on our CPU kernel (cpu_kernels.layers.use_cpu_kernel switches them in place)."""

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        return expert_projection(self, x, indices)


register_kernel_class(QuantizedSwitchLinear, KernelQuantizedSwitchLinear)


class SwitchGLU(nn.Module):
    """The experts: SwiGLU MLPs stacked along a leading expert axis."""

    def __init__(self, dim: int, hidden: int, num_experts: int):
        super().__init__()
        self.gate_proj = SwitchLinear(dim, hidden, num_experts)
        self.up_proj = SwitchLinear(dim, hidden, num_experts)
        self.down_proj = SwitchLinear(hidden, dim, num_experts)

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        """x (..., D), indices (..., k) -> each chosen expert's output (..., k, D)."""
        indices = mx.stop_gradient(indices)
        if indices.size < SORT_THRESHOLD:
            rows = mx.expand_dims(x, (-2, -3))  # (..., 1, 1, D): one row, broadcast over the k experts
            return self._experts(rows, indices, False).squeeze(-2)
        # Many pairs (prefill): order them by expert so each expert's weights are read once, in a run.
        k = indices.shape[-1]
        flat = indices.flatten()
        order = mx.argsort(flat)
        rows = x.reshape(-1, 1, x.shape[-1])[order // k]  # (N*k, 1, D), grouped by expert
        out = self._experts(rows, flat[order], True)  # (N*k, 1, D)
        return out[mx.argsort(order)].reshape(*indices.shape, x.shape[-1])

    def _experts(self, rows: mx.array, indices: mx.array, sorted_indices: bool) -> mx.array:
        gate = self.gate_proj(rows, indices, sorted_indices)
        up = self.up_proj(rows, indices, sorted_indices)
        return self.down_proj(nn.silu(gate) * up, indices, sorted_indices)


class SparseMoeBlock(nn.Module):
    def __init__(self, dim: int, moe: MoEArgs):
        super().__init__()
        self.top_k = moe.num_experts_per_tok
        self.norm_topk_prob = moe.norm_topk_prob
        self.gate = nn.Linear(dim, moe.num_experts, bias=False)  # the router
        self.switch_mlp = SwitchGLU(dim, moe.moe_intermediate_size, moe.num_experts)

    def __call__(self, x: mx.array) -> mx.array:
        probs = mx.softmax(self.gate(x), axis=-1, precise=True)  # (..., experts)
        chosen = mx.stop_gradient(mx.argpartition(probs, kth=-self.top_k, axis=-1)[..., -self.top_k:])
        weights = mx.take_along_axis(probs, chosen, axis=-1)  # (..., k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        out = self.switch_mlp(x, chosen)  # (..., k, D)
        return (out * weights[..., None]).sum(axis=-2).astype(out.dtype)


def stack_experts(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Hugging Face's `<layer>.mlp.experts.N.<proj>.<kind>` tensors -> mlx-lm's stacked
    `<layer>.mlp.switch_mlp.<proj>.<kind>` (experts first). Quantized triples stack the same way."""
    groups: dict[str, dict[int, mx.array]] = {}
    out: dict[str, mx.array] = {}
    for name, value in weights.items():
        m = _EXPERT_KEY.match(name)
        if m is None:
            out[name] = value
            continue
        prefix, expert, proj, kind = m.groups()
        groups.setdefault(f"{prefix}.switch_mlp.{proj}.{kind}", {})[int(expert)] = value
    for name, by_expert in groups.items():
        if sorted(by_expert) != list(range(len(by_expert))):
            missing = sorted(set(range(max(by_expert) + 1)) - set(by_expert))
            raise MacllmError(f"{name}: expert tensor(s) {missing} missing from the checkpoint; download it again")
        out[name] = mx.stack([by_expert[e] for e in range(len(by_expert))])
    return out


class Model(CausalLM):
    """Qwen3-MoE: sparse layers chosen by `decoder_sparse_step` and `mlp_only_layers`, dense MLP elsewhere."""

    def __init__(self, cfg: ModelConfig, rope_periods: mx.array | None = None):
        moe = MoEArgs.from_config(cfg)

        def make_mlp(layer: int) -> nn.Module:
            if moe.is_sparse(layer):
                return SparseMoeBlock(cfg.hidden_size, moe)
            return MLP(cfg.hidden_size, cfg.intermediate_size)

        super().__init__(cfg, Qwen3Body(cfg, make_mlp, rope_periods))
        self.moe = moe

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return stack_experts(super().sanitize(weights))
