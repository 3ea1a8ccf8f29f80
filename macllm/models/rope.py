"""Rotary position embeddings, including Llama 3's frequency scaling.

On Metal, `mx.fast.rope` is one fused kernel. On the CPU backend it is composed from ~15 small ops that
recompute the frequencies on every call (~60 us each, ~8 ms per token for a 30-layer model), so there
we rotate with cos/sin tables computed once per forward pass and shared by every layer.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn


def llama3_periods(dims: int, base: float, scaling: dict) -> mx.array:
    """Per-pair rotation periods after Llama 3's long-context rescaling of the low frequencies."""
    factor = scaling["factor"]
    low = scaling.get("low_freq_factor", 1.0)
    high = scaling.get("high_freq_factor", 4.0)
    original = scaling.get("original_max_position_embeddings", 8192)
    periods = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    wavelengths = 2 * math.pi * periods
    low_wavelength = original / low
    high_wavelength = original / high
    scaled = mx.where(wavelengths > low_wavelength, periods * factor, periods)
    # Between the two cut-offs, blend smoothly between scaled and unscaled.
    smooth = (original / wavelengths - low) / (high - low)
    blended = scaled / ((1 - smooth) / factor + smooth)
    in_between = (wavelengths <= low_wavelength) & (wavelengths >= high_wavelength)
    return mx.where(in_between, blended, scaled)


def rotate_half_split(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Hugging Face style rope (first half / second half of each head form the pairs)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RoPE(nn.Module):
    """One instance serves every layer of a model, so the CPU tables are built once per step."""

    def __init__(self, dims: int, base: float, scaling: dict | None = None, traditional: bool = False,
                 periods: mx.array | None = None):
        super().__init__()
        self.dims = dims
        self.traditional = traditional
        self.scale = 1.0
        self.base: float | None = base
        self._periods = periods
        scaling = scaling or {}
        kind = scaling.get("rope_type", scaling.get("type"))
        if periods is None and kind == "llama3":
            self._periods = llama3_periods(dims, base, scaling)
        elif kind == "linear":
            self.scale = 1.0 / scaling["factor"]
        elif kind not in (None, "default"):
            raise ValueError(f"unsupported rope scaling: {kind}")
        if self._periods is not None:
            self.base = None
        self._table_key: tuple[int, int] | None = None
        self._table: tuple[mx.array, mx.array] | None = None

    def _use_tables(self) -> bool:
        return not self.traditional and mx.default_device() == mx.cpu

    def _cos_sin(self, offset: int, length: int) -> tuple[mx.array, mx.array]:
        if self._table is None or self._table_key != (offset, length):
            periods = self._periods
            if periods is None:
                assert self.base is not None  # without stored periods RoPE always has a base
                periods = self.base ** (mx.arange(0, self.dims, 2, dtype=mx.float32) / self.dims)
            positions = mx.arange(offset, offset + length, dtype=mx.float32) * self.scale
            angles = positions[:, None] / periods[None, :]
            self._table = (mx.cos(angles), mx.sin(angles))
            self._table_key = (offset, length)
        return self._table

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        """x: (B, heads, L, head_dim)."""
        if self._use_tables() and x.shape[-1] == self.dims:
            cos, sin = self._cos_sin(offset, x.shape[-2])
            return rotate_half_split(x, cos, sin)
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=self.base, scale=self.scale,
                            offset=offset, freqs=self._periods)
