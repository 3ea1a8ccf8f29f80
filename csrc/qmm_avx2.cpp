// AVX2 + FMA + F16C row kernel (8 float lanes). Compiled with -mavx2 -mfma -mf16c; called only when
// the CPU has them. Same structure as qmm_avx512.cpp: per group t = sum(q * x), acc += scale * t,
// plus the biases' dot product with the activations' group sums.
#include <immintrin.h>

#include <cstring>

#include "qmm_kernels.h"

namespace macllm_cpu {
namespace {

void row_to_floats(ScaleType t, const void* base, size_t offset, int count, float* dst) {
  int i = 0;
  if (t == ScaleType::F32) {
    const float* src = static_cast<const float*>(base) + offset;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
  } else if (t == ScaleType::F16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    for (; i + 8 <= count; i += 8) {
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    for (; i + 8 <= count; i += 8) {
      __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    }
  }
  if (i < count) {  // the tail via a padded copy: scalar conversions here cost as much as a short row's dot
    const int rest = count - i;
    alignas(32) float wide[8];
    if (t == ScaleType::F32) {
      std::memcpy(wide, static_cast<const float*>(base) + offset + i, rest * sizeof(float));
    } else {
      alignas(16) uint16_t half[8] = {0};
      std::memcpy(half, static_cast<const uint16_t*>(base) + offset + i, rest * sizeof(uint16_t));
      const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(half));
      _mm256_store_ps(wide, t == ScaleType::F16 ? _mm256_cvtph_ps(h)
                                                : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    std::memcpy(dst + i, wide, rest * sizeof(float));
  }
}

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float dot(const float* a, const float* b, int count) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= count; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float total = hsum(acc);
  for (; i < count; ++i) total += a[i] * b[i];
  return total;
}

// acc (even groups) or acc_odd (odd groups) += scale * t: two chains of FMAs across the groups of a row
// (one chain of dependent FMAs was the limit).
template <int M>
__attribute__((always_inline)) inline void add_group(int g, float scale, const __m256* t, __m256* acc,
                                                     __m256* acc_odd) {
  const __m256 s = _mm256_set1_ps(scale);
  // A branch, not a pointer chosen at run time: the accumulators must stay in registers.
  if (g & 1) {
    for (int m = 0; m < M; ++m) acc_odd[m] = _mm256_fmadd_ps(s, t[m], acc_odd[m]);
  } else {
    for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(s, t[m], acc[m]);
  }
}

// out[m, n]: the row's weighted sums plus the biases' term (the row's biases . x's group sums).
template <int M>
__attribute__((always_inline)) inline void finish_row(const Problem& p, int n, const __m256* acc,
                                                      const __m256* acc_odd, const float* bb) {
  const int G = p.K / p.group_size;
  for (int m = 0; m < M; ++m) {
    p.out[static_cast<size_t>(m) * p.N + n] =
        hsum(_mm256_add_ps(acc[m], acc_odd[m])) + dot(bb, p.xsum + static_cast<size_t>(m) * G, G);
  }
}

template <int M, int BITS>
void rows(const Problem& p, int n0, int n1) {
  const int K = p.K, G = K / p.group_size, N = p.N;
  const size_t row_bytes = static_cast<size_t>(K) * BITS / 8;
  float sb[kMaxGroups], bb[kMaxGroups];
  const __m256i low4 = _mm256_set1_epi32(15);
  for (int n = n0; n < n1; ++n) {
    row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n) * G, G, sb);
    row_to_floats(p.scale_type, p.biases, static_cast<size_t>(n) * G, G, bb);
    const uint8_t* wr = p.w + n * row_bytes;
    __m256 acc[M], acc_odd[M];
    for (int m = 0; m < M; ++m) acc[m] = acc_odd[m] = _mm256_setzero_ps();
    for (int g = 0; g < G; ++g) {
      __m256 t[M], t2[M];  // two chains of FMAs within the group
      for (int m = 0; m < M; ++m) t[m] = t2[m] = _mm256_setzero_ps();
      const int k_end = (g + 1) * p.group_size;
      if (BITS == 4) {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 32) {
          for (int half = 0; half < 2; ++half) {  // bytes 8*half.. hold even/odd values 8*half..
            const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wr + k0 / 2 + 8 * half)));
            const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low4));
            const __m256 hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
            for (int m = 0; m < M; ++m) {
              const float* xm = p.x + static_cast<size_t>(m) * K + k0 + 8 * half;
              t[m] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xm), t[m]);
              t2[m] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xm + 16), t2[m]);
            }
          }
        }
      } else {
        for (int k0 = g * p.group_size; k0 < k_end; k0 += 16) {  // group sizes are multiples of 32
          const __m256 q0 = _mm256_cvtepi32_ps(
              _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wr + k0))));
          const __m256 q1 = _mm256_cvtepi32_ps(
              _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(wr + k0 + 8))));
          for (int m = 0; m < M; ++m) {
            const float* xm = p.x + static_cast<size_t>(m) * K + k0;
            t[m] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(xm), t[m]);
            t2[m] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xm + 8), t2[m]);
          }
        }
      }
      for (int m = 0; m < M; ++m) t[m] = _mm256_add_ps(t[m], t2[m]);
      add_group<M>(g, sb[g], t, acc, acc_odd);
    }
    finish_row<M>(p, n, acc, acc_odd, bb);
  }
}

// 2, 3, 5 and 6 bits, as in qmm_avx512.cpp: eight values (BITS bytes) per step, each 32-bit lane
// gets the two bytes holding its value by a byte shuffle, then a per-lane shift and mask.
template <int M, int BITS>
void rows_packed(const Problem& p, int n0, int n1) {
  const int K = p.K, G = K / p.group_size, N = p.N;
  const size_t row_bytes = static_cast<size_t>(K) * BITS / 8;
  float sb[kMaxGroups], bb[kMaxGroups];
  alignas(32) int8_t control[32];
  alignas(32) int32_t shifts[8];
  for (int j = 0; j < 8; ++j) {
    const int bit = BITS * j;
    for (int b = 0; b < 4; ++b) control[4 * j + b] = b < 2 ? static_cast<int8_t>((bit >> 3) + b) : -128;
    shifts[j] = bit & 7;
  }
  const __m256i ctrl = _mm256_load_si256(reinterpret_cast<const __m256i*>(control));
  const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(shifts));
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  const uint8_t* w_end = p.w + static_cast<size_t>(p.N) * row_bytes;
  for (int n = n0; n < n1; ++n) {
    row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n) * G, G, sb);
    row_to_floats(p.scale_type, p.biases, static_cast<size_t>(n) * G, G, bb);
    const uint8_t* wr = p.w + n * row_bytes;
    __m256 acc[M], acc_odd[M];
    for (int m = 0; m < M; ++m) acc[m] = acc_odd[m] = _mm256_setzero_ps();
    // A chunk's 16-byte load reads past its row: only rows near the matrix's end check each chunk.
    const bool near_end = (static_cast<size_t>(n) + 1) * row_bytes + 16 > static_cast<size_t>(N) * row_bytes;
    for (int g = 0; g < G; ++g) {
      __m256 t[M];
      for (int m = 0; m < M; ++m) t[m] = _mm256_setzero_ps();
      const int k_end = (g + 1) * p.group_size;
      for (int k0 = g * p.group_size; k0 < k_end; k0 += 8) {
        const uint8_t* src = wr + static_cast<size_t>(k0) * BITS / 8;
        alignas(16) uint8_t bytes[16];  // zeroed only when used: clearing it per chunk cost measurable time
        if (near_end && src + 16 > w_end) {
          std::memset(bytes, 0, sizeof bytes);
          std::memcpy(bytes, src, BITS);
          src = bytes;
        }
        const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
        const __m256 q = _mm256_cvtepi32_ps(
            _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, ctrl), shift), mask));
        for (int m = 0; m < M; ++m) {
          t[m] = _mm256_fmadd_ps(q, _mm256_loadu_ps(p.x + static_cast<size_t>(m) * K + k0), t[m]);
        }
      }
      add_group<M>(g, sb[g], t, acc, acc_odd);
    }
    finish_row<M>(p, n, acc, acc_odd, bb);
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

void rows_avx2(const Problem& p, int n0, int n1) {
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
