// The LoRA delta's two small products on x86 SIMD (lora_avx2.cpp), called by lora_delta.cpp only after a
// runtime check for AVX2, FMA and F16C. ISA-neutral declarations on plain pointers: see qmm_kernels.h for
// why the ISA files see no MLX or standard-library templates.
#pragma once

#include "qmm_kernels.h"

namespace macllm_cpu {

#if defined(__x86_64__) || defined(_M_X64)
// xa (M x r floats) = x @ a: x holds M prepared rows of K floats (for `pairs32`, each run of 32 as its 16
// even then its 16 odd values, Problem::x's 4-bit order); a is K x r of `type`, row-major.
void lora_xa_avx2(const float* x, const void* a, ScaleType type, int M, int K, int r, bool pairs32, float* xa);

// out[m, n] += scale * sum_j xa[m, j] * b[j, n] for m < M and n0 <= n < n1, the sum taken in order of j with
// one fused multiply-add each (out has row stride N; b is r x N of `type`, row-major). A column's result
// does not depend on where n0 and n1 fall.
void lora_add_avx2(const float* xa, const void* b, ScaleType type, int M, int N, int r, int n0, int n1, float scale,
                   float* out);
#endif

}  // namespace macllm_cpu
