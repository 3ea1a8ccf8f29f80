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

inline float dot(const float* a, const float* b, int count) {
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= count; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < count) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (count - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

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
