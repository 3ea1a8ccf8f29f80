"""Learning rate: linear warmup from ~0 to the peak, then cosine decay to a floor."""

from __future__ import annotations

import math

import mlx.core as mx


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int, floor_ratio: float = 0.1):
    """A schedule for mlx optimizers (called with the optimizer's step count, an mx.array)."""
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    decay_steps = max(1, total_steps - warmup_steps)
    floor = peak * floor_ratio

    def schedule(step):
        step = mx.array(step, dtype=mx.float32)
        # Warmup starts at peak / (warmup + 1), never 0: the first step already learns something.
        warm = peak * (step + 1) / (warmup_steps + 1)
        progress = mx.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = floor + (peak - floor) * 0.5 * (1 + mx.cos(math.pi * progress))
        return mx.where(step < warmup_steps, warm, cosine)

    return schedule
