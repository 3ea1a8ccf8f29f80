"""Affine group quantization in MLX's packed layout: each group of weights is stored as integer codes
with one scale and one bias, w ~ scale * code + bias.

The starting point is min/max (scale = (max - min) / (2**bits - 1), bias = min), GGUF Q4_1's recipe, so
re-quantizing Q4_1 weights at 4 bits, group 32 reproduces them bit for bit. With `search`, each group
also tries narrower ranges (clipping a few outliers lets the other weights use finer steps) and refits
scale and bias by least squares to the codes they produce, keeping whichever candidate has the smallest
error; min/max is only replaced where another candidate is strictly better. `importance` weights the
error per input column (mean squared activation from calibration text), so the columns the model leans
on are reproduced best. This is llama.cpp's imatrix idea applied to MLX's layout; mx.quantize (what
mlx-lm uses) is plain rounding to a min/max grid.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from macllm.errors import MacllmError

SCALES_DTYPE = mx.float16
SHRINK = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # fractions of each group's min..max range tried by `search`
CHUNK_VALUES = 1 << 22  # rows are processed in slices of about this many weights to bound memory


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes (rows, cols) -> MLX's packed uint32 words: one little-endian bit stream per row,
    the first code in the lowest bits (for 2, 4 and 8 bits: 32 // bits codes per word)."""
    rows, cols = codes.shape
    if cols * bits % 32:
        raise ValueError(f"a row of {cols} {bits}-bit codes does not fill whole 32-bit words")
    if 32 % bits == 0:
        per_word = 32 // bits
        shifts = np.arange(per_word, dtype=np.uint32) * bits
        words = codes.astype(np.uint32).reshape(rows, cols // per_word, per_word) << shifts
        return np.bitwise_or.reduce(words, axis=-1)
    planes = (codes.astype(np.uint8)[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
    stream = planes.reshape(rows, cols * bits)
    return np.packbits(stream, axis=-1, bitorder="little").view("<u4").reshape(rows, cols * bits // 32)


def _stored(x: mx.array, dtype) -> mx.array:
    """x as it will be stored (scales and biases are kept in `dtype`), back in float32 for arithmetic."""
    return x.astype(dtype).astype(mx.float32)


def _minmax(groups: mx.array, levels: int, dtype) -> tuple[mx.array, mx.array]:
    low = groups.min(axis=-1, keepdims=True)
    high = groups.max(axis=-1, keepdims=True)
    # Scale in float64 (float32 division can land one float16 step off Q4_1's stored scale).
    spread = np.array(high, dtype=np.float64) - np.array(low, dtype=np.float64)
    return _stored(mx.array(spread / levels), dtype), _stored(low, dtype)


def _codes(groups, scales, biases, levels):
    safe = mx.where(scales == 0, 1.0, scales)
    return mx.clip(mx.round((groups - biases) / safe), 0, levels)


def _error(groups, weight, scales, biases, codes):
    return (weight * mx.square(codes * scales + biases - groups)).sum(axis=-1, keepdims=True)


def _least_squares(groups, weight, codes, scales, biases):
    """Scale and bias minimizing the weighted squared error for fixed codes (closed form, 2x2)."""
    sw, sq, sqq = weight.sum(-1, keepdims=True), (weight * codes).sum(-1, keepdims=True), \
        (weight * codes * codes).sum(-1, keepdims=True)
    sx, sqx = (weight * groups).sum(-1, keepdims=True), (weight * codes * groups).sum(-1, keepdims=True)
    det = sw * sqq - sq * sq
    ok = det > 1e-20 * mx.maximum(sw * sqq, 1e-30)
    safe = mx.where(ok, det, 1.0)
    new_scales = (sw * sqx - sq * sx) / safe
    new_biases = (sqq * sx - sq * sqx) / safe
    keep = ok & (new_scales > 0)
    return mx.where(keep, new_scales, scales), mx.where(keep, new_biases, biases)


def _mlx_parameters(groups, bits):
    """mx.quantize's own choice (it keeps the larger-magnitude edge of each group exact)."""
    rows, n, size = groups.shape
    _, scales, biases = mx.quantize(groups.reshape(rows, n * size), group_size=size, bits=bits)
    return scales[..., None].astype(mx.float32), biases[..., None].astype(mx.float32)


def _quantize_slice(groups, weight, bits, search, dtype):
    levels = (1 << bits) - 1
    scales, biases = _minmax(groups, levels, dtype)
    codes = _codes(groups, scales, biases, levels)
    if not search:
        return codes, scales, biases
    best = _error(groups, weight, scales, biases, codes)
    candidates = [_mlx_parameters(groups, bits)]
    low, high = groups.min(axis=-1, keepdims=True), groups.max(axis=-1, keepdims=True)
    centre, half = (low + high) / 2, (high - low) / 2
    candidates += [(2 * half * fraction / levels, centre - half * fraction) for fraction in SHRINK]
    for s, b in candidates:
        c = _codes(groups, s, b, levels)
        s, b = _least_squares(groups, weight, c, s, b)
        s, b = _stored(s, dtype), _stored(b, dtype)
        c = _codes(groups, s, b, levels)
        err = _error(groups, weight, s, b, c)
        better = err < best  # strictly: min/max stays wherever it is already as good (Q4_1 round trip)
        codes, scales, biases = mx.where(better, c, codes), mx.where(better, s, scales), mx.where(better, b, biases)
        best = mx.where(better, err, best)
        mx.eval(codes, scales, biases, best)
    return codes, scales, biases


def affine_quantize(w: mx.array, bits: int = 4, group_size: int = 32, importance: mx.array | None = None,
                    search: bool = False, scales_dtype=SCALES_DTYPE) -> tuple[mx.array, mx.array, mx.array]:
    """(packed uint32 weights, scales, biases) for a 2-D matrix, MLX layout. `importance`: one
    non-negative weight per column (input feature) for the error `search` minimizes."""
    rows, cols = w.shape
    if cols % group_size:
        raise MacllmError(f"cannot quantize a matrix of width {cols} in groups of {group_size}")
    weight = mx.ones((1, cols // group_size, group_size)) if importance is None else \
        importance.astype(mx.float32).reshape(1, cols // group_size, group_size)
    step = max(1, CHUNK_VALUES // cols)
    packed, scales, biases = [], [], []
    for start in range(0, rows, step):
        groups = w[start:start + step].astype(mx.float32).reshape(-1, cols // group_size, group_size)
        c, s, b = _quantize_slice(groups, weight, bits, search, scales_dtype)
        packed.append(pack_codes(np.array(c.astype(mx.uint8).reshape(-1, cols)), bits))
        scales.append(s.squeeze(-1).astype(scales_dtype))
        biases.append(b.squeeze(-1).astype(scales_dtype))
    return mx.array(np.concatenate(packed)), mx.concatenate(scales), mx.concatenate(biases)
