// The row kernels of our CPU quantized matmul: out = x @ dequantize(w)^T for up to 8 rows of x.
//
// Weights are in MLX's affine packing: row n of w holds K values of `bits` bits (2, 3, 4, 5, 6 or 8)
// as a little-endian bit stream, value k at bit k * bits (so for 4 bits, byte j of a row holds value
// 2j in its low nibble and 2j+1 in its high nibble); value = scale[n, g] * q + bias[n, g] for group
// g = k / group_size.
//
// Each ISA lives in its own file compiled with its own flags (x86) and is only called after a
// runtime CPU check. Those files use no templates from the standard library: an inline function
// compiled there with AVX-512 could otherwise be the copy the linker keeps for everyone.
#pragma once

#include <cstddef>
#include <cstdint>

namespace macllm_cpu {

enum class ScaleType : int { F32 = 0, F16 = 1, BF16 = 2 };

// At most this many groups per row (K / group_size): the kernels keep one row's scales and biases
// as floats on the stack.
constexpr int kMaxGroups = 4096;
constexpr int kMaxRows = 8;

struct Problem {
  // Up to kMaxRows rows of K floats, prepared by the caller: for 4 bits, each run of 32 values is
  // stored as its 16 even-indexed values then its 16 odd-indexed ones (the order the nibbles
  // unpack in); for other widths, as is.
  const float* x;
  const float* xsum;  // per row, the sum of x over each group (G floats): the biases' term
  const uint8_t* w;   // N rows of K * bits / 8 bytes
  const void* scales;  // N x G, of scale_type
  const void* biases;  // N x G, of scale_type
  ScaleType scale_type;
  float* out;          // rows of N floats (row stride N)
  int M, N, K, group_size, bits;
  // The int8 path (rows_avx512_vnni): x quantized per block of 32 by quantize_rows_int8
  // (same order as `x`), and each block's scale repeated kScaleLanes times (row stride K / 32 *
  // kScaleLanes). Null when the caller prepared floats only.
  const int8_t* xq = nullptr;
  const float* xq_scale = nullptr;
  // xq again per chunk of kChunkValues values in the order of the weights' codes after the kernel's
  // in-register transpose (chunk_int8_rows), and each chunk's block scales in that order (kChunkScales
  // floats). A row's last chunk may be padded (int8_chunks). Null when K has no chunk.
  const int8_t* xq_chunks = nullptr;
  const float* xq_chunk_scale = nullptr;

  // The same problem from activation row `row` on (x, xsum, out and, when set, xq and xq_scale).
  Problem from_row(size_t row) const;
};

// Each int8 block's scale is stored this many times over: one 256-bit vector, ready to multiply.
constexpr int kScaleLanes = 8;
// The int8 kernel's chunk: 16 blocks of 32, whose codes it transposes in registers so that each 32-bit
// lane holds one block (its integer sums then need one conversion and scaling per 512 values, not per 64).
constexpr int kChunkValues = 512;
constexpr int kChunkScales = 32;  // 4 bits: one vector of 16 block scales; 8 bits: two
// Blocks left after a row's whole chunks that make one more chunk, padded with zero activations: from 8
// blocks on, a chunk computes them in fewer instructions than pairs of blocks do (Qwen2.5-Coder-0.5B's
// rows of 896 values are one chunk and 12 blocks).
constexpr int kPaddedChunkBlocks = 8;

// Chunks per row of K values for the int8 kernel (any width): the whole ones, and a padded last one.
inline int int8_chunks(int K) {
  return K / kChunkValues + ((K % kChunkValues) / 32 >= kPaddedChunkBlocks ? 1 : 0);
}
// How many of chunk c's 16 blocks are the row's (fewer in a padded chunk): chunk_int8_rows and the kernel
// must agree on it.
inline int int8_chunk_blocks(int K, int c) {
  const int left = K / 32 - c * 16;
  return left < 16 ? left : 16;
}

inline Problem Problem::from_row(size_t row) const {
  Problem p = *this;
  p.x = x + row * K;
  p.xsum = xsum + row * (K / group_size);
  p.out = out + row * N;
  if (xq != nullptr) {
    p.xq = xq + row * K;
    p.xq_scale = xq_scale + row * (K / 32) * kScaleLanes;
  }
  if (xq_chunks != nullptr) {
    p.xq_chunks = xq_chunks + row * int8_chunks(K) * kChunkValues;
    p.xq_chunk_scale = xq_chunk_scale + row * int8_chunks(K) * kChunkScales;
  }
  return p;
}

// Computes out[m, n] for all m < M (M <= kMaxRows) and n0 <= n < n1.
using RowsFn = void (*)(const Problem&, int n0, int n1);

// Writes weight rows n0..n1 dequantized to floats (row stride K) in the order the kernels keep x in
// (for 4 bits, each run of 32 as 16 even then 16 odd values), for prefill through sgemm. Uses only
// p.w, p.scales, p.biases, p.scale_type, p.K, p.group_size, p.bits.
using DequantFn = void (*)(const Problem&, int n0, int n1, float* dst);

void rows_scalar(const Problem& p, int n0, int n1);
void dequant_scalar(const Problem& p, int n0, int n1, float* dst);

// x (M rows of K floats, K a multiple of 32) to int8 per block of 32: scale d = absmax / 127, q =
// round-half-even(x * (127 / absmax)), so |x - d * q| <= d / 2. A block of zeros gets d = 0; a block
// with a non-finite value gets d = NaN (the row's result is NaN, as in float32). Writes xq (M * K),
// xq_scale (M * K / 32 * kScaleLanes) and xq_sum (M * K / group_size): each group's sum of the
// quantized values d * q, for the biases' term, so that the result is exactly dequantize(w) times the
// quantized x (with the float sums the rounding errors of the codes' term, whose codes are all >= 0,
// would not cancel against the biases').
void quantize_rows_int8(const float* x, int M, int K, int group_size, int8_t* xq, float* xq_scale, float* xq_sum);
// Whether the int8 kernel reads chunks (Problem::xq_chunks) for this K (any width).
inline bool int8_chunked(int K) { return int8_chunks(K) > 0; }
// quantize_rows_int8's xq and xq_scale rearranged for the int8 kernel's chunks (4 bits have an order of
// their own, every other width that of 8 bits): writes
// M * int8_chunks(K) * kChunkValues codes and M * int8_chunks(K) * kChunkScales scales (a padded chunk's
// blocks past the row: zero codes and zero scales).
void chunk_int8_rows(const int8_t* xq, const float* xq_scale, int M, int K, int bits, int8_t* chunks,
                     float* chunk_scale);
// The int8 path's semantics (reads p.xq, p.xq_scale, p.xsum, which the int8 path points at xq_sum):
// per block of 32 the exact integer dot of the weights' codes with xq, times the block's scale and the
// group's weight scale, plus the biases' term as in rows_scalar. For tests (selftest).
void rows_int8_scalar(const Problem& p, int n0, int n1);
#if defined(__x86_64__) || defined(_M_X64)
void rows_avx2(const Problem& p, int n0, int n1);
void rows_avx512(const Problem& p, int n0, int n1);
void dequant_avx512(const Problem& p, int n0, int n1, float* dst);
// The int8 path on AVX-512 VNNI + VBMI (vpdpbusd), every width; without p.xq it is rows_avx512.
void rows_avx512_vnni(const Problem& p, int n0, int n1);
#endif
#if defined(__aarch64__)
void rows_neon(const Problem& p, int n0, int n1);
#endif

// Value k of a row of 2, 3, 5 or 6-bit values (a little-endian bit stream: value k at bit k * bits).
float packed_value(const uint8_t* row, size_t row_bytes, int k, int bits);

// One scale or bias as a float (IEEE half and bfloat16 decoded by bit manipulation).
float scale_at(ScaleType t, const void* base, size_t i);

}  // namespace macllm_cpu
