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
};

// Computes out[m, n] for all m < M (M <= kMaxRows) and n0 <= n < n1.
using RowsFn = void (*)(const Problem&, int n0, int n1);

// Writes weight rows n0..n1 dequantized to floats (row stride K) in the order the kernels keep x in
// (for 4 bits, each run of 32 as 16 even then 16 odd values), for prefill through sgemm. Uses only
// p.w, p.scales, p.biases, p.scale_type, p.K, p.group_size, p.bits.
using DequantFn = void (*)(const Problem&, int n0, int n1, float* dst);

void rows_scalar(const Problem& p, int n0, int n1);
void dequant_scalar(const Problem& p, int n0, int n1, float* dst);
#if defined(__x86_64__) || defined(_M_X64)
void rows_avx2(const Problem& p, int n0, int n1);
void rows_avx512(const Problem& p, int n0, int n1);
void dequant_avx512(const Problem& p, int n0, int n1, float* dst);
#endif
#if defined(__aarch64__)
void rows_neon(const Problem& p, int n0, int n1);
#endif

// Value k of a row of 2, 3, 5 or 6-bit values (a little-endian bit stream: value k at bit k * bits).
float packed_value(const uint8_t* row, size_t row_bytes, int k, int bits);

// One scale or bias as a float (IEEE half and bfloat16 decoded by bit manipulation).
float scale_at(ScaleType t, const void* base, size_t i);

}  // namespace macllm_cpu
