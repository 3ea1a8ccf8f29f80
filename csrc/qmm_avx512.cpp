// AVX-512 (F + BW) row kernel (16 float lanes). Compiled with -mavx512f -mavx512bw; called only when
// the CPU has both.
//
// Per group: unpack the weights to float lanes, multiply-add them with the prepared activations
// into a per-row partial t, then acc += scale * t. The biases' term is a separate dot product of
// the row's biases with the activations' group sums.
#include <immintrin.h>

#include <cstring>

#include "qmm_avx512_rows.h"
#include "qmm_kernels.h"

namespace macllm_cpu {
namespace {

// acc (even groups) or acc_odd (odd groups) += scale * t: two chains of FMAs across the groups of a row
// (one chain of dependent FMAs was the limit).
template <int M>
__attribute__((always_inline)) inline void add_group(int g, float scale, const __m512* t, __m512* acc,
                                                     __m512* acc_odd) {
  const __m512 s = _mm512_set1_ps(scale);
  // A branch, not a pointer chosen at run time: the accumulators must stay in registers.
  if (g & 1) {
    for (int m = 0; m < M; ++m) acc_odd[m] = _mm512_fmadd_ps(s, t[m], acc_odd[m]);
  } else {
    for (int m = 0; m < M; ++m) acc[m] = _mm512_fmadd_ps(s, t[m], acc[m]);
  }
}

template <int M, int BITS>
void rows(const Problem& p, int n0, int n1) {
  const int K = p.K, G = K / p.group_size;
  const size_t row_bytes = static_cast<size_t>(K) * BITS / 8;
  float sb[kMaxGroups], bb[kMaxGroups];
  const __m512i low4 = _mm512_set1_epi32(15);
  for (int n = n0; n < n1; ++n) {
    row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n) * G, G, sb);
    row_to_floats(p.scale_type, p.biases, static_cast<size_t>(n) * G, G, bb);
    const uint8_t* wr = p.w + n * row_bytes;
    __m512 acc[M], acc_odd[M];
    for (int m = 0; m < M; ++m) acc[m] = acc_odd[m] = _mm512_setzero_ps();
    for (int g = 0; g < G; ++g) {
      __m512 t[M], t_hi[M];  // the low and high nibbles' sums: two chains again
      for (int m = 0; m < M; ++m) t[m] = t_hi[m] = _mm512_setzero_ps();
      const int k_end = (g + 1) * p.group_size;
      if (BITS == 4) {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 32) {
          const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k0 / 2)));
          const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, low4));
          const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
          for (int m = 0; m < M; ++m) {
            const float* xm = p.x + static_cast<size_t>(m) * K + k0;
            t[m] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xm), t[m]);
            t_hi[m] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xm + 16), t_hi[m]);
          }
        }
      } else {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 32) {  // group sizes are multiples of 32
          const __m512 q0 = _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k0))));
          const __m512 q1 = _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k0 + 16))));
          for (int m = 0; m < M; ++m) {
            const float* xm = p.x + static_cast<size_t>(m) * K + k0;
            t[m] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(xm), t[m]);
            t_hi[m] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xm + 16), t_hi[m]);
          }
        }
      }
      for (int m = 0; m < M; ++m) t[m] = _mm512_add_ps(t[m], t_hi[m]);
      add_group<M>(g, sb[g], t, acc, acc_odd);
    }
    finish_row<M>(p, n, acc, acc_odd, bb);
  }
}

// 2, 3, 5 and 6 bits: a row is a little-endian bit stream, value k at bit k * BITS. Sixteen values
// take 2 * BITS bytes; each 32-bit lane j gets the two bytes holding value j by a byte shuffle, then
// a per-lane shift and mask.
template <int BITS>
struct PackedUnpacker {
  __m512i ctrl, shift, mask;
  PackedUnpacker() {
    alignas(64) int8_t control[64];
    alignas(64) int32_t shifts[16];
    for (int j = 0; j < 16; ++j) {
      const int bit = BITS * j;
      for (int b = 0; b < 4; ++b) control[4 * j + b] = b < 2 ? static_cast<int8_t>((bit >> 3) + b) : -128;
      shifts[j] = bit & 7;
    }
    ctrl = _mm512_load_si512(control);
    shift = _mm512_load_si512(shifts);
    mask = _mm512_set1_epi32((1 << BITS) - 1);
  }
  // Sixteen values starting at src (2 * BITS bytes; the load reads 16).
  __m512 operator()(const uint8_t* src) const {
    const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(v, ctrl), shift), mask));
  }
};

// GUARDED: a row near the matrix's end, where a 16-byte load could read past it: chunks are copied first.
template <int M, int BITS, bool GUARDED>
void packed_row(const Problem& p, const PackedUnpacker<BITS>& unpack, const float* sb, const float* bb, int n) {
  const int K = p.K, G = K / p.group_size;
  const uint8_t* wr = p.w + static_cast<size_t>(n) * K * BITS / 8;
  __m512 acc[M], acc_odd[M];
  for (int m = 0; m < M; ++m) acc[m] = acc_odd[m] = _mm512_setzero_ps();
  for (int g = 0; g < G; ++g) {
    __m512 t[M], t2[M];  // alternate chunks: two chains
    for (int m = 0; m < M; ++m) t[m] = t2[m] = _mm512_setzero_ps();
    const int k_end = (g + 1) * p.group_size;
    for (int k0 = g * p.group_size; k0 < k_end; k0 += 32) {  // group sizes are multiples of 32
      const uint8_t* src = wr + static_cast<size_t>(k0) * BITS / 8;
      __m512 q0, q1;
      if constexpr (GUARDED) {
        alignas(16) uint8_t bytes[32] = {0};
        std::memcpy(bytes, src, 4 * BITS);
        q0 = unpack(bytes);
        q1 = unpack(bytes + 2 * BITS);
      } else {
        q0 = unpack(src);
        q1 = unpack(src + 2 * BITS);
      }
      for (int m = 0; m < M; ++m) {
        const float* xm = p.x + static_cast<size_t>(m) * K + k0;
        t[m] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(xm), t[m]);
        t2[m] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(xm + 16), t2[m]);
      }
    }
    for (int m = 0; m < M; ++m) t[m] = _mm512_add_ps(t[m], t2[m]);
    add_group<M>(g, sb[g], t, acc, acc_odd);
  }
  finish_row<M>(p, n, acc, acc_odd, bb);
}

// 2, 3, 5 and 6 bits: a row is a little-endian bit stream, value k at bit k * BITS. Sixteen values
// take 2 * BITS bytes; each 32-bit lane j gets the two bytes holding value j by a byte shuffle, then
// a per-lane shift and mask.
template <int M, int BITS>
void rows_packed(const Problem& p, int n0, int n1) {
  const int G = p.K / p.group_size;
  const size_t row_bytes = static_cast<size_t>(p.K) * BITS / 8;
  float sb[kMaxGroups], bb[kMaxGroups];
  const PackedUnpacker<BITS> unpack;
  for (int n = n0; n < n1; ++n) {
    row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n) * G, G, sb);
    row_to_floats(p.scale_type, p.biases, static_cast<size_t>(n) * G, G, bb);
    // A chunk's 16-byte load reads up to 16 bytes past its row: only rows that near the matrix's end
    // copy their chunks first.
    if ((static_cast<size_t>(n) + 1) * row_bytes + 16 <= static_cast<size_t>(p.N) * row_bytes) {
      packed_row<M, BITS, false>(p, unpack, sb, bb, n);
    } else {
      packed_row<M, BITS, true>(p, unpack, sb, bb, n);
    }
  }
}

template <int M, int BITS>
void rows_any(const Problem& p, int n0, int n1) {
  if constexpr (BITS == 4 || BITS == 8) {
    rows<M, BITS>(p, n0, n1);
  } else {
    rows_packed<M, BITS>(p, n0, n1);
  }
}

template <int BITS>
void rows_bits(const Problem& p, int n0, int n1) {
  switch (p.M) {
    case 1: return rows_any<1, BITS>(p, n0, n1);
    case 2: return rows_any<2, BITS>(p, n0, n1);
    case 3: return rows_any<3, BITS>(p, n0, n1);
    case 4: return rows_any<4, BITS>(p, n0, n1);
    case 5: return rows_any<5, BITS>(p, n0, n1);
    case 6: return rows_any<6, BITS>(p, n0, n1);
    case 7: return rows_any<7, BITS>(p, n0, n1);
    default: return rows_any<8, BITS>(p, n0, n1);
  }
}

}  // namespace

void dequant_avx512(const Problem& p, int n0, int n1, float* dst) {
  if (p.bits != 4 && p.bits != 8) return dequant_scalar(p, n0, n1, dst);
  const int K = p.K, G = K / p.group_size;
  const size_t row_bytes = static_cast<size_t>(K) * p.bits / 8;
  float sb[kMaxGroups], bb[kMaxGroups];
  const __m512i low4 = _mm512_set1_epi32(15);
  for (int n = n0; n < n1; ++n) {
    row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n) * G, G, sb);
    row_to_floats(p.scale_type, p.biases, static_cast<size_t>(n) * G, G, bb);
    const uint8_t* wr = p.w + n * row_bytes;
    float* out = dst + static_cast<size_t>(n - n0) * K;
    for (int g = 0; g < G; ++g) {
      const __m512 s = _mm512_set1_ps(sb[g]), b = _mm512_set1_ps(bb[g]);
      const int k_end = (g + 1) * p.group_size;
      if (p.bits == 4) {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 32) {
          const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k0 / 2)));
          _mm512_storeu_ps(out + k0, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, low4)), s, b));
          _mm512_storeu_ps(out + k0 + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), s, b));
        }
      } else {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 16) {
          const __m512 q = _mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + k0))));
          _mm512_storeu_ps(out + k0, _mm512_fmadd_ps(q, s, b));
        }
      }
    }
  }
}

void rows_avx512(const Problem& p, int n0, int n1) {
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
