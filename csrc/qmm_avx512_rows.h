// Helpers of the AVX-512 row kernels (qmm_avx512.cpp, qmm_avx512_vnni.cpp). Included only by files
// compiled with AVX-512 flags; internal linkage, so each file keeps the copy compiled with its own
// flags (see qmm_kernels.h).
#pragma once

#include <immintrin.h>

#include "qmm_kernels.h"

namespace macllm_cpu {
namespace {

inline void row_to_floats(ScaleType t, const void* base, size_t offset, int count, float* dst) {
  int i = 0;
  if (t == ScaleType::F32) {
    const float* src = static_cast<const float*>(base) + offset;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
  } else if (t == ScaleType::F16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    for (; i + 16 <= count; i += 16) {
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    }
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    for (; i + 16 <= count; i += 16) {
      __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
  }
  if (i < count) {  // the tail through a masked load: a scalar loop here cost as much as a short row's dot
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - i)) - 1);
    if (t == ScaleType::F32) {
      _mm512_mask_storeu_ps(dst + i, mask, _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + offset + i));
    } else {
      const __m256i h = _mm512_castsi512_si256(
          _mm512_maskz_loadu_epi16(static_cast<__mmask32>(mask), static_cast<const uint16_t*>(base) + offset + i));
      const __m512 f = t == ScaleType::F16 ? _mm512_cvtph_ps(h)
                                           : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      _mm512_mask_storeu_ps(dst + i, mask, f);
    }
  }
}

// dot()'s lanes before their sum.
inline __m512 dot_terms(const float* a, const float* b, int count) {
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= count; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < count) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), acc);
  }
  return acc;
}

inline float dot(const float* a, const float* b, int count) { return _mm512_reduce_add_ps(dot_terms(a, b, count)); }

// _mm512_reduce_add_ps of 16 vectors at once, bit for bit: GCC's tree of additions (lane i with i + 8, then
// with i + 4, i + 2 and i + 1; float addition is commutative, so only the pairing matters), each level run on
// all 16 vectors together by shuffles. Lane r of the result is v[r]'s sum. One vector at a time, each sum
// is a chain of four shuffles and adds that a short row's kernel waits on (a third of a SmolLM2 row's time).
inline __m512 reduce_add_16(const __m512* v) {
  __m512 halves[8], quarters[4], pairs[2];
  for (int r = 0; r < 8; ++r) {  // vector r: v[2r]'s lanes i + (i + 8) in lanes 0-7, v[2r + 1]'s in 8-15
    const __m512 a = v[2 * r], b = v[2 * r + 1];
    halves[r] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (int t = 0; t < 4; ++t) {  // 128-bit lane q: v[4t + q]'s four partial sums
    const __m512 a = halves[2 * t], b = halves[2 * t + 1];
    quarters[t] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int u = 0; u < 2; ++u) {  // 128-bit lane q: two partial sums of v[8u + q], then two of v[8u + 4 + q]
    const __m512 a = quarters[2 * u], b = quarters[2 * u + 1];
    pairs[u] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Lane 4q + k: the sum of v[q + 4k]; put each in lane q + 4k.
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), sums);
}

// The results of a run of consecutive weight rows for M activation rows: each row's accumulator lanes and its
// biases' term lanes wait here until 16 rows have them, then both are summed by reduce_add_16 and written as
// one vector per activation row. out[m, n] is reduce(acc) + reduce(bias terms), as one row at a time gave.
template <int M>
struct RowSums {
  alignas(64) float terms[M][16][16];
  alignas(64) float bias_terms[M][16][16];
  int count = 0, first = 0;

  __attribute__((always_inline)) void put(int m, __m512 acc, __m512 bias) {
    _mm512_store_ps(terms[m][count], acc);
    _mm512_store_ps(bias_terms[m][count], bias);
  }
  // Row n's M results are in (put); flushes every 16 rows.
  __attribute__((always_inline)) void next(const Problem& p, int n) {
    if (count == 0) first = n;
    if (++count == 16) flush(p);
  }
  void flush(const Problem& p) {
    if (count == 0) return;
    const __mmask16 mask = static_cast<__mmask16>((1u << count) - 1);
    for (int m = 0; m < M; ++m) {
      __m512 a[16], b[16];
      for (int i = 0; i < 16; ++i) {  // slots past `count` hold an earlier run's rows or nothing: zeros instead
        a[i] = i < count ? _mm512_load_ps(terms[m][i]) : _mm512_setzero_ps();
        b[i] = i < count ? _mm512_load_ps(bias_terms[m][i]) : _mm512_setzero_ps();
      }
      _mm512_mask_storeu_ps(p.out + static_cast<size_t>(m) * p.N + first, mask,
                            _mm512_add_ps(reduce_add_16(a), reduce_add_16(b)));
    }
    count = 0;
  }
};

// out[m, n]: the row's weighted sums plus the biases' term (the row's biases . x's group sums).
template <int M>
__attribute__((always_inline)) inline void finish_row(const Problem& p, int n, const __m512* acc,
                                                      const __m512* acc_odd, const float* bb) {
  const int G = p.K / p.group_size;
  for (int m = 0; m < M; ++m) {
    p.out[static_cast<size_t>(m) * p.N + n] =
        _mm512_reduce_add_ps(_mm512_add_ps(acc[m], acc_odd[m])) + dot(bb, p.xsum + static_cast<size_t>(m) * G, G);
  }
}

}  // namespace
}  // namespace macllm_cpu
