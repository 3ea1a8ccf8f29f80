// The LoRA delta on AVX2 + FMA + F16C (lora_kernels.h). Compiled with -mavx2 -mfma -mf16c; called only
// when the CPU has them. Adapters arrive in the model's compute dtype, float16 for GGUF models: converting
// them with vcvtph2ps here, eight at a time, replaced MLX's float16_t bit manipulation, one value at a time,
// which cost more than reading the adapter (docs/benchmarks.md, "Live adapters").
#include <immintrin.h>

#include <cstring>

#include "lora_kernels.h"

namespace macllm_cpu {
namespace {

// Eight consecutive values of `base` from element i, as floats (half and bfloat16 widen exactly).
template <ScaleType T>
inline __m256 load8(const void* base, size_t i) {
  if constexpr (T == ScaleType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (T == ScaleType::F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <ScaleType T>
inline float load1(const void* base, size_t i) {
  if constexpr (T == ScaleType::F32) {
    return static_cast<const float*>(base)[i];
  } else {
    const uint16_t h = static_cast<const uint16_t*>(base)[i];
    if constexpr (T == ScaleType::F16) return _cvtsh_ss(h);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
}

// x values k and k + 1 (k even) of a prepared row: in the 4-bit order a run of 32 holds its even values
// first, so value 2i is at i and 2i + 1 at 16 + i.
inline void pair_at(const float* x, int k, bool pairs32, float& x0, float& x1) {
  if (pairs32) {
    const int k0 = k & ~31, i = (k - k0) >> 1;
    x0 = x[k0 + i];
    x1 = x[k0 + 16 + i];
  } else {
    x0 = x[k];
    x1 = x[k + 1];
  }
}

// Columns j0 .. j0 + 8C of one row's x @ a: even and odd k in separate accumulators (two dependency chains
// per 8 columns), added at the end. K is even (a multiple of the group size).
template <ScaleType T, int C>
void xa_chunks(const float* x, const void* a, int K, int r, int j0, bool pairs32, float* xa) {
  __m256 even[C], odd[C];
  for (int c = 0; c < C; ++c) even[c] = odd[c] = _mm256_setzero_ps();
  for (int k = 0; k < K; k += 2) {
    float x0, x1;
    pair_at(x, k, pairs32, x0, x1);
    const __m256 v0 = _mm256_set1_ps(x0), v1 = _mm256_set1_ps(x1);
    const size_t row0 = static_cast<size_t>(k) * r + j0, row1 = row0 + r;
    for (int c = 0; c < C; ++c) {
      even[c] = _mm256_fmadd_ps(v0, load8<T>(a, row0 + 8 * c), even[c]);
      odd[c] = _mm256_fmadd_ps(v1, load8<T>(a, row1 + 8 * c), odd[c]);
    }
  }
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(xa + j0 + 8 * c, _mm256_add_ps(even[c], odd[c]));
}

// One column the same way, for ranks that are not a multiple of 8.
template <ScaleType T>
float xa_column(const float* x, const void* a, int K, int r, int j, bool pairs32) {
  float even = 0.0f, odd = 0.0f;
  for (int k = 0; k < K; k += 2) {
    float x0, x1;
    pair_at(x, k, pairs32, x0, x1);
    even = __builtin_fmaf(x0, load1<T>(a, static_cast<size_t>(k) * r + j), even);
    odd = __builtin_fmaf(x1, load1<T>(a, static_cast<size_t>(k + 1) * r + j), odd);
  }
  return even + odd;
}

template <ScaleType T>
void xa_rows(const float* x, const void* a, int M, int K, int r, bool pairs32, float* xa) {
  for (int m = 0; m < M; ++m) {
    const float* row = x + static_cast<size_t>(m) * K;
    float* dst = xa + static_cast<size_t>(m) * r;
    int j = 0;
    for (; j + 32 <= r; j += 32) xa_chunks<T, 4>(row, a, K, r, j, pairs32, dst);
    switch ((r - j) / 8) {  // the last 8 to 24 columns in one pass over a as well
      case 3: xa_chunks<T, 3>(row, a, K, r, j, pairs32, dst); break;
      case 2: xa_chunks<T, 2>(row, a, K, r, j, pairs32, dst); break;
      case 1: xa_chunks<T, 1>(row, a, K, r, j, pairs32, dst); break;
      default: break;
    }
    j += (r - j) / 8 * 8;
    for (; j < r; ++j) dst[j] = xa_column<T>(row, a, K, r, j, pairs32);
  }
}

// Columns [n, n + 8C) of one output row: out += c_j * b[j, :] for j in order, in registers.
template <ScaleType T, int C>
inline void add_chunks(const float* c, const void* b, int N, int r, int n, float* out) {
  __m256 acc[C];
  for (int i = 0; i < C; ++i) acc[i] = _mm256_loadu_ps(out + n + 8 * i);
  for (int j = 0; j < r; ++j) {
    const __m256 cj = _mm256_set1_ps(c[j]);
    const size_t row = static_cast<size_t>(j) * N + n;
    for (int i = 0; i < C; ++i) acc[i] = _mm256_fmadd_ps(cj, load8<T>(b, row + 8 * i), acc[i]);
  }
  for (int i = 0; i < C; ++i) _mm256_storeu_ps(out + n + 8 * i, acc[i]);
}

template <ScaleType T>
void add_rows(const float* xa, const void* b, int M, int N, int r, int n0, int n1, float scale, float* out) {
  constexpr int kMaxRank = 256;  // the scaled xa of one row on the stack; larger ranks in slices of it
  float c[kMaxRank];
  for (int m = 0; m < M; ++m) {
    float* orow = out + static_cast<size_t>(m) * N;
    for (int j0 = 0; j0 < r; j0 += kMaxRank) {
      const int count = r - j0 < kMaxRank ? r - j0 : kMaxRank;
      for (int j = 0; j < count; ++j) c[j] = scale * xa[static_cast<size_t>(m) * r + j0 + j];
      const void* bj = static_cast<const char*>(b) + static_cast<size_t>(j0) * N * (T == ScaleType::F32 ? 4 : 2);
      int n = n0;
      for (; n + 32 <= n1; n += 32) add_chunks<T, 4>(c, bj, N, count, n, orow);
      for (; n + 8 <= n1; n += 8) add_chunks<T, 1>(c, bj, N, count, n, orow);
      for (; n < n1; ++n) {  // the same operations as a vector lane
        float acc = orow[n];
        for (int j = 0; j < count; ++j) acc = __builtin_fmaf(c[j], load1<T>(bj, static_cast<size_t>(j) * N + n), acc);
        orow[n] = acc;
      }
    }
  }
}

}  // namespace

void lora_xa_avx2(const float* x, const void* a, ScaleType type, int M, int K, int r, bool pairs32, float* xa) {
  switch (type) {
    case ScaleType::F32: xa_rows<ScaleType::F32>(x, a, M, K, r, pairs32, xa); break;
    case ScaleType::F16: xa_rows<ScaleType::F16>(x, a, M, K, r, pairs32, xa); break;
    case ScaleType::BF16: xa_rows<ScaleType::BF16>(x, a, M, K, r, pairs32, xa); break;
  }
}

void lora_add_avx2(const float* xa, const void* b, ScaleType type, int M, int N, int r, int n0, int n1, float scale,
                   float* out) {
  switch (type) {
    case ScaleType::F32: add_rows<ScaleType::F32>(xa, b, M, N, r, n0, n1, scale, out); break;
    case ScaleType::F16: add_rows<ScaleType::F16>(xa, b, M, N, r, n0, n1, scale, out); break;
    case ScaleType::BF16: add_rows<ScaleType::BF16>(xa, b, M, N, r, n0, n1, scale, out); break;
  }
}

}  // namespace macllm_cpu
