// The per-row arithmetic the fused ops share, written once so that the one-op-per-step path
// (fused_*.cpp) and the whole decoder layer (fused_layer.cpp) give bit-identical results.
#pragma once

#include <cmath>
#include <cstdint>

namespace macllm_cpu {

// exp(x) for x <= 0 (softmax arguments after the max is subtracted): 2^n * p(r), r in [-ln2/2, ln2/2],
// p a degree-6 polynomial (relative error ~2e-7, float32's rounding). Below -87 it is 0. No branches or
// calls, so loops over it vectorise (libm's expf is a scalar call).
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // Round to nearest by adding and removing 1.5 * 2^23 (vectorizes on baseline SSE2, unlike nearbyint).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln 2 in two parts: r stays exact
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  static_assert(sizeof(scale) == sizeof(bits));
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// One row: h = x (+ r), y = h * rsqrt(mean(h^2) + eps) * w. The sum of squares is float32, as MLX's.
// Strides are in elements; h may be null (no residual output wanted).
inline void norm_row(const float* x, int64_t xs, const float* r, int64_t rs, const float* w, int64_t ws, int D,
                     float eps, float* h, float* y) {
  float sum_sq = 0.0f;
  for (int d = 0; d < D; ++d) {
    float v = x[d * xs];
    if (r != nullptr) v += r[d * rs];
    if (h != nullptr) h[d] = v;
    y[d] = v;
    sum_sq += v * v;
  }
  const float inv = 1.0f / std::sqrt(sum_sq / static_cast<float>(D) + eps);
  for (int d = 0; d < D; ++d) y[d] = (y[d] * inv) * w[d * ws];
}

// silu(g) * u for one value.
inline float silu_times(float g, float u) { return g * (1.0f / (1.0f + std::exp(-g))) * u; }

// Half-split rotary embedding of one head's row: the first 2R features rotated by cos/sin (R each,
// strides cs/ss), the rest copied. x has stride xs; dst is contiguous.
inline void rotate_row(const float* x, int64_t xs, const float* c, int64_t cs, const float* sn, int64_t ss, int R,
                       int D, float* dst) {
  for (int i = 0; i < R; ++i) {
    const float x1 = x[i * xs], x2 = x[(i + R) * xs];
    const float ci = c[i * cs], si = sn[i * ss];
    dst[i] = x1 * ci - x2 * si;
    dst[i + R] = x2 * ci + x1 * si;
  }
  for (int d = 2 * R; d < D; ++d) dst[d] = x[d * xs];
}

}  // namespace macllm_cpu
