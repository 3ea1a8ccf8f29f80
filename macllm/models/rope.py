"""Rotary position embeddings, including Llama 3's frequency scaling, on top of mx.fast.rope."""

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


class RoPE(nn.Module):
    def __init__(self, dims: int, base: float, scaling: dict | None = None, traditional: bool = False,
                 periods: mx.array | None = None):
        super().__init__()
        self.dims = dims
        self.traditional = traditional
        self.scale = 1.0
        self.base: float | None = base
        self._periods = periods
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
        if periods is None and kind == "llama3":
            self._periods = llama3_periods(dims, base, scaling)
        elif kind == "linear":
            self.scale = 1.0 / scaling["factor"]
        elif kind not in (None, "default"):
            raise ValueError(f"unsupported rope scaling: {kind}")
        if self._periods is not None:
            self.base = None

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=self.base, scale=self.scale,
                            offset=offset, freqs=self._periods)
