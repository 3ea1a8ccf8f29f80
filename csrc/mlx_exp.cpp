// MLX's CPU exp, the same arithmetic step for step (mlx/backend/cpu/simd/math.h): y = x * log2(e),
// n = floor(y + 0.5) (in double there), f = y - n, a degree-6 polynomial in f by fused multiply-adds, times 2^n; NaN
// passes through, above 88 is inf, below -88 is 0. Built with -ffp-contract=off (CMakeLists.txt): a
// multiply and an add the compiler fused on its own would round differently from MLX's.
// On x86-64 the loop is also compiled for AVX2+FMA (vroundps, vfmadd: the same correctly rounded floor
// and fma as libm's), used when the CPU has them; AArch64 has both in its baseline.
#include "mlx_exp.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace macllm_cpu {

namespace {

// The loop, compiled once per instruction set below.
inline __attribute__((always_inline)) void exp_loop(const float* x, float shift, float* out, int n) {
  for (int i = 0; i < n; ++i) {
    const float v = x[i] - shift;
    // Clamped only so that the float-to-int conversion is defined: outside +-88.5 the selects below
    // decide the result, exactly as in MLX.
    const float c = v > 88.5f ? 88.5f : (v < -88.5f ? -88.5f : v);
    const float y = c * 1.442695f;
    // MLX adds a double 0.5 and floors in double: round half up, done here exactly in float.
    const float down = std::floor(y);
    const float ipart = y - down >= 0.5f ? down + 1.0f : down;
    const float f = y - ipart;
    float p = 1.535336188319500e-4f;
    p = std::fma(p, f, 1.339887440266574e-3f);
    p = std::fma(p, f, 9.618437357674640e-3f);
    p = std::fma(p, f, 5.550332471162809e-2f);
    p = std::fma(p, f, 2.402264791363012e-1f);
    p = std::fma(p, f, 6.931472028550421e-1f);
    p = std::fma(p, f, 1.000000000000000f);
    const int32_t bits = (static_cast<int32_t>(ipart) + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    float r = two_n * p;
    r = v != v ? v : r;
    r = v > 88.0f ? INFINITY : r;
    r = v < -88.0f ? 0.0f : r;
    out[i] = r;
  }
}

#if defined(__x86_64__)
// x86-64's baseline has neither a vector floor nor an fma instruction (libm's fmaf is a call per use).
__attribute__((target("avx2,fma"))) void exp_avx2(const float* x, float shift, float* out, int n) {
  exp_loop(x, shift, out, n);
}
const bool has_avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

}  // namespace

void exp_shifted(const float* x, float shift, float* out, int n) {
#if defined(__x86_64__)
  if (has_avx2_fma) return exp_avx2(x, shift, out, n);
#endif
  exp_loop(x, shift, out, n);
}

}  // namespace macllm_cpu
