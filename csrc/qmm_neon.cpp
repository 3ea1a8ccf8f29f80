// NEON row kernel (4 float lanes) for arm64. Same structure as qmm_avx512.cpp. NEON is baseline on
// arm64, so no runtime check. Written alongside the x86 kernels; see docs/kernels.md for what was
// compiled and tested where.
#include <arm_neon.h>

#include "qmm_kernels.h"

namespace macllm_cpu {
namespace {

float dot(const float* a, const float* b, int count) {
  float32x4_t acc = vdupq_n_f32(0.0f);
  int i = 0;
  for (; i + 4 <= count; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), vld1q_f32(b + i));
  float total = vaddvq_f32(acc);
  for (; i < count; ++i) total += a[i] * b[i];
  return total;
}

// Four float vectors from the 16 bytes of v (lanes 0..15 in order).
inline void widen(uint8x16_t v, float32x4_t out[4]) {
  const uint16x8_t a = vmovl_u8(vget_low_u8(v));
  const uint16x8_t b = vmovl_high_u8(v);
  out[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(a)));
  out[1] = vcvtq_f32_u32(vmovl_high_u16(a));
  out[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(b)));
  out[3] = vcvtq_f32_u32(vmovl_high_u16(b));
}

template <int M, int BITS>
void rows(const Problem& p, int n0, int n1) {
  const int K = p.K, G = K / p.group_size, N = p.N;
  const size_t row_bytes = static_cast<size_t>(K) * BITS / 8;
  float sb[kMaxGroups], bb[kMaxGroups];
  for (int n = n0; n < n1; ++n) {
    for (int g = 0; g < G; ++g) {
      sb[g] = scale_at(p.scale_type, p.scales, static_cast<size_t>(n) * G + g);
      bb[g] = scale_at(p.scale_type, p.biases, static_cast<size_t>(n) * G + g);
    }
    const uint8_t* wr = p.w + n * row_bytes;
    float32x4_t acc[M];
    for (int m = 0; m < M; ++m) acc[m] = vdupq_n_f32(0.0f);
    for (int g = 0; g < G; ++g) {
      float32x4_t t[M];
      for (int m = 0; m < M; ++m) t[m] = vdupq_n_f32(0.0f);
      const int k_end = (g + 1) * p.group_size;
      if (BITS == 4) {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 32) {
          const uint8x16_t v = vld1q_u8(wr + k0 / 2);
          float32x4_t lo[4], hi[4];
          widen(vandq_u8(v, vdupq_n_u8(15)), lo);
          widen(vshrq_n_u8(v, 4), hi);
          for (int m = 0; m < M; ++m) {
            const float* xm = p.x + static_cast<size_t>(m) * K + k0;
            for (int i = 0; i < 4; ++i) {
              t[m] = vfmaq_f32(t[m], lo[i], vld1q_f32(xm + 4 * i));
              t[m] = vfmaq_f32(t[m], hi[i], vld1q_f32(xm + 16 + 4 * i));
            }
          }
        }
      } else if (BITS == 8) {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 16) {
          float32x4_t q[4];
          widen(vld1q_u8(wr + k0), q);
          for (int m = 0; m < M; ++m) {
            const float* xm = p.x + static_cast<size_t>(m) * K + k0;
            for (int i = 0; i < 4; ++i) t[m] = vfmaq_f32(t[m], q[i], vld1q_f32(xm + 4 * i));
          }
        }
      } else {  // 2, 3, 5, 6 bits: unpacked one value at a time (not tuned)
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 16) {
          float values[16];
          for (int i = 0; i < 16; ++i) values[i] = packed_value(wr, row_bytes, k0 + i, BITS);
          for (int m = 0; m < M; ++m) {
            const float* xm = p.x + static_cast<size_t>(m) * K + k0;
            for (int i = 0; i < 4; ++i) t[m] = vfmaq_f32(t[m], vld1q_f32(values + 4 * i), vld1q_f32(xm + 4 * i));
          }
        }
      }
      const float32x4_t s = vdupq_n_f32(sb[g]);
      for (int m = 0; m < M; ++m) acc[m] = vfmaq_f32(acc[m], s, t[m]);
    }
    for (int m = 0; m < M; ++m) {
      p.out[static_cast<size_t>(m) * N + n] = vaddvq_f32(acc[m]) + dot(bb, p.xsum + static_cast<size_t>(m) * G, G);
    }
  }
}

template <int BITS>
void rows_bits(const Problem& p, int n0, int n1) {
  switch (p.M) {
    case 1: return rows<1, BITS>(p, n0, n1);
    case 2: return rows<2, BITS>(p, n0, n1);
    case 3: return rows<3, BITS>(p, n0, n1);
    case 4: return rows<4, BITS>(p, n0, n1);
    case 5: return rows<5, BITS>(p, n0, n1);
    case 6: return rows<6, BITS>(p, n0, n1);
    case 7: return rows<7, BITS>(p, n0, n1);
    default: return rows<8, BITS>(p, n0, n1);
  }
}

}  // namespace

void rows_neon(const Problem& p, int n0, int n1) {
  switch (p.bits) {
    case 2: return rows_bits<2>(p, n0, n1);
    case 3: return rows_bits<3>(p, n0, n1);
    case 4: return rows_bits<4>(p, n0, n1);
    case 5: return rows_bits<5>(p, n0, n1);
    case 6: return rows_bits<6>(p, n0, n1);
    default: return rows_bits<8>(p, n0, n1);
  }
}

}  // namespace macllm_cpu
