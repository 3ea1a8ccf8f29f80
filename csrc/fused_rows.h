// The per-row arithmetic the fused ops share, written once so that the one-op-per-step path
// (fused_*.cpp) and the whole decoder layer (fused_layer.cpp) give bit-identical results.
#pragma once

#include <cmath>
#include <cstdint>

namespace macllm_cpu {

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
