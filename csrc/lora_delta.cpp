// The LoRA delta (lora_delta.h): on x86 with AVX2, FMA and F16C the SIMD kernels (lora_avx2.cpp), else, or
// when the scalar row kernel is chosen (set_isa, for tests), plain loops over MLX's element types (native
// half precision on arm64).
#include "lora_delta.h"

#include "lora_kernels.h"
#include "qmm_dispatch.h"
#include "qmm_prepare.h"

namespace macllm_cpu {
namespace {

bool simd() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return has && current_rows() != rows_scalar;
#else
  return false;
#endif
}

template <typename T>
void xa_plain(const float* xp, const mx::array& a, int M, int K, int bits, float* xa) {
  const int r = static_cast<int>(a.shape(1));
  const T* ap = a.data<T>();
  // dst += xk * a[k, :] over r contiguous values: the loop the compiler vectorizes.
  auto accumulate = [r](float* dst, float xk, const T* arow) {
    for (int j = 0; j < r; ++j) dst[j] += xk * static_cast<float>(arow[j]);
  };
  for (int m = 0; m < M; ++m) {
    float* dst = xa + static_cast<size_t>(m) * r;
    for (int j = 0; j < r; ++j) dst[j] = 0.0f;
    const float* row = xp + static_cast<size_t>(m) * K;
    if (bits == 4) {  // the prepared row holds each run of 32 as its 16 even then its 16 odd values
      for (int k0 = 0; k0 < K; k0 += 32) {
        for (int i = 0; i < 16; ++i) {
          accumulate(dst, row[k0 + i], ap + static_cast<size_t>(k0 + 2 * i) * r);
          accumulate(dst, row[k0 + 16 + i], ap + static_cast<size_t>(k0 + 2 * i + 1) * r);
        }
      }
    } else {
      for (int k = 0; k < K; ++k) accumulate(dst, row[k], ap + static_cast<size_t>(k) * r);
    }
  }
}

template <typename T>
void add_plain(const float* xa, const mx::array& b, int M, int N, int n0, int n1, float scale, float* out) {
  const int r = static_cast<int>(b.shape(0));
  const T* bp = b.data<T>();
  for (int m = 0; m < M; ++m) {
    float* orow = out + static_cast<size_t>(m) * N;
    for (int j = 0; j < r; ++j) {
      const float c = scale * xa[static_cast<size_t>(m) * r + j];
      const T* brow = bp + static_cast<size_t>(j) * N;
      for (int n = n0; n < n1; ++n) orow[n] += c * static_cast<float>(brow[n]);
    }
  }
}

}  // namespace

void lora_input(const float* xp, const mx::array& a, int M, int K, int bits, float* xa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (simd()) {
    return lora_xa_avx2(xp, a.data<void>(), scale_type(a.dtype()), M, K, static_cast<int>(a.shape(1)), bits == 4, xa);
  }
#endif
  switch (a.dtype()) {
    case mx::float32: xa_plain<float>(xp, a, M, K, bits, xa); break;
    case mx::float16: xa_plain<mx::float16_t>(xp, a, M, K, bits, xa); break;
    default: xa_plain<mx::bfloat16_t>(xp, a, M, K, bits, xa); break;
  }
}

void prefetch_columns(const mx::array& b, int n0, int n1) {
  const size_t item = b.itemsize(), N = b.shape(1), bytes = (n1 - n0) * item;
  const char* base = static_cast<const char*>(b.data<void>());
  for (int j = 0; j < b.shape(0); ++j) {
    const char* piece = base + (j * N + n0) * item;
    for (size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(piece + offset);
    __builtin_prefetch(piece + bytes - 1);  // the piece's last line when it starts mid-line
  }
}

void lora_columns(const float* xa, const mx::array& b, int M, int N, int n0, int n1, float scale, float* out) {
#if defined(__x86_64__) || defined(_M_X64)
  if (simd()) {
    return lora_add_avx2(xa, b.data<void>(), scale_type(b.dtype()), M, N, static_cast<int>(b.shape(0)), n0, n1, scale,
                         out);
  }
#endif
  switch (b.dtype()) {
    case mx::float32: add_plain<float>(xa, b, M, N, n0, n1, scale, out); break;
    case mx::float16: add_plain<mx::float16_t>(xa, b, M, N, n0, n1, scale, out); break;
    default: add_plain<mx::bfloat16_t>(xa, b, M, N, n0, n1, scale, out); break;
  }
}

}  // namespace macllm_cpu
