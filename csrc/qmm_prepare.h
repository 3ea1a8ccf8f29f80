// What the quantized-matmul primitives share before the row kernels run: the activations' rows in
// the kernels' order with their group sums, and the scales' type. Included by the primitives' files
// only (never by an ISA-specific file: see qmm_kernels.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mlx/mlx.h"
#include "op_check.h"
#include "qmm_kernels.h"
#include "strided.h"

namespace macllm_cpu {

namespace mx = mlx::core;

inline bool is_float(mx::Dtype t) { return t == mx::float32 || t == mx::float16 || t == mx::bfloat16; }

inline ScaleType scale_type(mx::Dtype t) {
  if (t == mx::float16) return ScaleType::F16;
  if (t == mx::bfloat16) return ScaleType::BF16;
  return ScaleType::F32;
}

// One row of K values (element stride `inner`) as floats in the kernels' order (see Problem::x), and
// its G group sums.
template <typename T>
void prepare_row(const T* row, int64_t inner, int K, int bits, int group_size, float* dst, float* sums) {
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
  for (int g = 0; g < K / group_size; ++g) {
    float sum = 0.0f;
    for (int k = g * group_size; k < (g + 1) * group_size; ++k) sum += static_cast<float>(row[k * inner]);
    sums[g] = sum;
  }
}

// x's rows prepared (prepare_row); x may have any strides.
template <typename T>
void prepare_rows(const mx::array& x, int K, int bits, int group_size, float* xp, float* xsum) {
  const size_t M = x.size() / K;
  const int G = K / group_size;
  for (size_t r = 0; r < M; ++r) {
    prepare_row(x.data<T>() + row_offset(x, r), x.strides().back(), K, bits, group_size, xp + r * K, xsum + r * G);
  }
}

using SgemmFn = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values

// The process's cblas_sgemm if it is a fast one (OpenBLAS or Accelerate), else nullptr (qmm_primitive.cpp).
SgemmFn fast_sgemm();

// Weight rows per dequantized tile that goes to sgemm: ~8 MB of float32. Every sgemm call packs the
// whole activation matrix again, so small tiles pay that many times over: 1 MB tiles (29 rows of a
// 8960-wide down projection) left Qwen2.5-Coder-1.5B's prefill at 41 tok/s, 8 MB ones 64 (docs/kernels.md).
inline int sgemm_tile_rows(int N, int K) { return std::max(16, std::min(N, (1 << 21) / K)); }

// The weights as the kernels read them: row-major (a copy node only where they are not already).
inline mx::array row_contiguous(const mx::array& a, const mx::Stream& s) {
  if (a.is_available() && a.flags().row_contiguous) return a;
  return mx::contiguous(a, false, s);
}

// The checks every quantized product shares: the CPU, the packing, and scales/biases of `groups` per
// row matching w's rows (w's last two axes are the matrix; stacked experts lead).
inline void check_quantized(const char* op, const mx::Stream& stream, const mx::array& w, const mx::array& scales,
                            const mx::array& biases, int group_size, int bits, int K) {
  check_op(stream.device == mx::Device::cpu, op, "runs on the CPU only");
  check_op(bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8, op,
           "bits must be 2, 3, 4, 5, 6 or 8");
  check_op(group_size == 32 || group_size == 64 || group_size == 128, op, "group_size must be 32, 64 or 128");
  check_op(w.dtype() == mx::uint32, op, "w must be uint32 (MLX's packing)");
  check_op(K % group_size == 0 && K / group_size <= kMaxGroups, op, "K must be a multiple of group_size");
  mx::Shape expected = w.shape();
  expected.back() = K / group_size;
  check_op(scales.shape() == expected && is_float(scales.dtype()), op, "scales must be float (..., N, K / group_size)");
  check_op(biases.shape() == scales.shape() && biases.dtype() == scales.dtype(), op, "biases must match scales");
}

// Float results into a float16 or bfloat16 output.
inline void store_floats(const float* src, size_t count, mx::array& out) {
  if (out.dtype() == mx::float16) {
    auto* dst = out.data<mx::float16_t>();
    for (size_t i = 0; i < count; ++i) dst[i] = static_cast<mx::float16_t>(src[i]);
  } else {
    auto* dst = out.data<mx::bfloat16_t>();
    for (size_t i = 0; i < count; ++i) dst[i] = static_cast<mx::bfloat16_t>(src[i]);
  }
}

// The int8 activations of p's prepared float rows (Problem::xq), in buffers the caller keeps: xq_scale
// holds the blocks' scales, then the quantized group sums that p.xsum now points at (the float rows
// stay for a LoRA delta), then the chunks' scales; xq holds the codes, then their chunk order.
inline void prepare_int8(Problem& p, std::vector<int8_t>& xq, std::vector<float>& xq_scale) {
  const size_t codes = static_cast<size_t>(p.M) * p.K, scales = static_cast<size_t>(p.M) * (p.K / 32) * kScaleLanes;
  const size_t sums = static_cast<size_t>(p.M) * (p.K / p.group_size);
  const bool chunked = int8_chunked(p.K);
  const size_t chunks = chunked ? static_cast<size_t>(p.M) * int8_chunks(p.K) : 0;
  xq.resize(codes + chunks * kChunkValues);
  xq_scale.resize(scales + sums + chunks * kChunkScales);
  quantize_rows_int8(p.x, p.M, p.K, p.group_size, xq.data(), xq_scale.data(), xq_scale.data() + scales);
  p.xq = xq.data();
  p.xq_scale = xq_scale.data();
  p.xsum = xq_scale.data() + scales;
  if (chunked) {
    chunk_int8_rows(p.xq, p.xq_scale, p.M, p.K, p.bits, xq.data() + codes, xq_scale.data() + scales + sums);
    p.xq_chunks = xq.data() + codes;
    p.xq_chunk_scale = xq_scale.data() + scales + sums;
  }
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
