// What the quantized-matmul primitives share before the row kernels run: the activations' rows in
// the kernels' order with their group sums, and the scales' type. Included by the primitives' files
// only (never by an ISA-specific file: see qmm_kernels.h).
#pragma once

#include <cstdint>

#include "mlx/mlx.h"
#include "qmm_kernels.h"

namespace macllm_cpu {

namespace mx = mlx::core;

inline bool is_float(mx::Dtype t) { return t == mx::float32 || t == mx::float16 || t == mx::bfloat16; }

inline ScaleType scale_type(mx::Dtype t) {
  if (t == mx::float16) return ScaleType::F16;
  if (t == mx::bfloat16) return ScaleType::BF16;
  return ScaleType::F32;
}

// x's rows as floats in the kernels' order (see Problem::x), and each row's group sums. x may have
// any strides.
template <typename T>
void prepare_rows(const mx::array& x, int K, int bits, int group_size, float* xp, float* xsum) {
  const T* base = x.data<T>();
  const auto& shape = x.shape();
  const auto& strides = x.strides();
  const int nd = static_cast<int>(x.ndim());
  const int64_t inner = strides[nd - 1];
  const size_t M = x.size() / K;
  const int G = K / group_size;
  for (size_t r = 0; r < M; ++r) {
    int64_t offset = 0;
    size_t rest = r;
    for (int d = nd - 2; d >= 0; --d) {
      offset += static_cast<int64_t>(rest % shape[d]) * strides[d];
      rest /= shape[d];
    }
    const T* row = base + offset;
    float* dst = xp + r * K;
    if (bits == 4) {
      for (int k0 = 0; k0 < K; k0 += 32) {
        for (int j = 0; j < 16; ++j) {
          dst[k0 + j] = static_cast<float>(row[(k0 + 2 * j) * inner]);
          dst[k0 + 16 + j] = static_cast<float>(row[(k0 + 2 * j + 1) * inner]);
        }
      }
    } else {
      for (int k = 0; k < K; ++k) dst[k] = static_cast<float>(row[k * inner]);
    }
    for (int g = 0; g < G; ++g) {
      float sum = 0.0f;
      for (int k = g * group_size; k < (g + 1) * group_size; ++k) sum += static_cast<float>(row[k * inner]);
      xsum[r * G + g] = sum;
    }
  }
}


using SgemmFn = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values

// The process's cblas_sgemm if it is a fast one (OpenBLAS or Accelerate), else nullptr (qmm_primitive.cpp).
SgemmFn fast_sgemm();

// The weights as the kernels read them: row-major (a copy node only where they are not already).
inline mx::array row_contiguous(const mx::array& a, const mx::Stream& s) {
  if (a.is_available() && a.flags().row_contiguous) return a;
  return mx::contiguous(a, false, s);
}

// prepare_rows for any float dtype of x.
inline void prepare_x(const mx::array& x, int K, int bits, int group_size, float* xp, float* xsum) {
  switch (x.dtype()) {
    case mx::float32: prepare_rows<float>(x, K, bits, group_size, xp, xsum); break;
    case mx::float16: prepare_rows<mx::float16_t>(x, K, bits, group_size, xp, xsum); break;
    default: prepare_rows<mx::bfloat16_t>(x, K, bits, group_size, xp, xsum); break;
  }
}

}  // namespace macllm_cpu
