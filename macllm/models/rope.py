"""Rotary position embeddings, including Llama 3's, YaRN's and LongRoPE's ("su") frequency scaling.

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


def su_scaled(dims: int, base: float, scaling: dict, context: int, original: int) -> tuple[mx.array, float]:
    """LongRoPE ("su" / "longrope", Phi-3 and Phi-4): (per-pair periods, attention factor).

    Always the long factors, as mlx-lm does (and llama.cpp at a full-size context): switching to the short
    ones for short prompts would change the rotation of keys already in the KV cache. The attention factor
    scales the rotated part of q and k; the config's own wins over the default sqrt(1 + ln s / ln original)."""
    factors = mx.array(scaling["long_factor"], dtype=mx.float32)
    if factors.shape != (dims // 2,):
        raise ValueError(f"rope_scaling.long_factor has {factors.size} values for {dims // 2} rotated pairs")
    periods = factors * base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        stretch = context / original
        attention_factor = 1.0 if stretch <= 1.0 else math.sqrt(1 + math.log(stretch) / math.log(original))
    return periods, float(attention_factor)


def yarn_scaled(dims: int, base: float, scaling: dict) -> tuple[mx.array, float]:
    """YaRN (Qwen3 / Qwen2.5 long context, DeepSeek): (per-pair periods, attention factor).

    Pairs that turn many times within the original context keep their period (extrapolate); pairs that turn
    less than once are stretched by `factor` (interpolate); a linear ramp over the pair index between the
    two blends them. The attention factor 0.1 ln(factor) + 1 (relative to `mscale_all_dim`'s) scales the
    rotated features, as mlx-lm and transformers do."""
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings", 4096)
    beta_fast, beta_slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)

    def pair_turning(turns: float) -> float:  # the pair index whose period fits `turns` in the context
        return dims * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(base))

    low = float(max(math.floor(pair_turning(beta_fast)), 0))
    high = float(min(math.ceil(pair_turning(beta_slow)), dims - 1))
    if high == low:
        high += 0.001
    ramp = mx.clip((mx.arange(dims // 2, dtype=mx.float32) - low) / (high - low), 0, 1)
    keep = 1.0 - ramp  # 1: extrapolate (unchanged period), 0: interpolate (period * factor)
    periods = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    stretched = factor * periods
    blended = stretched * periods / (stretched * keep + periods * (1 - keep))

    def magnitude(m: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    attention_factor = magnitude(scaling.get("mscale", 1)) / magnitude(scaling.get("mscale_all_dim", 0))
    return blended, attention_factor


def rotate_half_split(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Hugging Face style rope (first half / second half of each head form the pairs)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RoPE(nn.Module):
    """One instance serves every layer of a model, so the CPU tables are built once per step."""

    def __init__(self, dims: int, base: float, scaling: dict | None = None, traditional: bool = False,
                 periods: mx.array | None = None, attention_factor: float = 1.0):
        """`dims` < head width rotates only the first `dims` features (partial rotary); `attention_factor`
        multiplies the rotated features (LongRoPE's)."""
        super().__init__()
        self.dims = dims
        self.traditional = traditional
        self.scale = 1.0
        self.attention_factor = attention_factor
        self.base: float | None = base
        self._periods = periods
        scaling = scaling or {}
        kind = scaling.get("rope_type", scaling.get("type"))
        if periods is None and kind == "llama3":
            self._periods = llama3_periods(dims, base, scaling)
        elif periods is None and kind == "yarn":
            self._periods, self.attention_factor = yarn_scaled(dims, base, scaling)
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
            # The attention factor folded into the tables: free once they are built.
            self._table = (mx.cos(angles) * self.attention_factor, mx.sin(angles) * self.attention_factor)
            self._table_key = (offset, length)
        return self._table

    def cpu_tables(self, offset: int, length: int) -> tuple[mx.array, mx.array] | None:
        """The (cos, sin) tables (length, dims / 2) this rope rotates with on the CPU, None where it uses
        mx.fast.rope instead (Metal, or the interleaved "traditional" pairs)."""
        return self._cos_sin(offset, length) if self._use_tables() else None

    def __call__(self, x: mx.array, offset: int = 0) -> mx.array:
        """x: (B, heads, L, head_dim)."""
        if self._use_tables():
            cos, sin = self._cos_sin(offset, x.shape[-2])
            if x.shape[-1] == self.dims:
                return rotate_half_split(x, cos, sin)
            return mx.concatenate([rotate_half_split(x[..., :self.dims], cos, sin), x[..., self.dims:]], axis=-1)
        if self.attention_factor != 1.0:
            x = x.at[..., :self.dims].multiply(self.attention_factor)
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=self.base, scale=self.scale,
                            offset=offset, freqs=self._periods)
