// exp as MLX's CPU backend computes it (its simd::exp: a Cephes polynomial for 2^fraction and the
// exponent built in the float's bits), to the bit, but vectorized. The sampling op (sample_token.cpp)
// must reproduce mx.logsumexp, mx.softmax and mx.exp exactly so that it picks the same tokens as the
// MLX composition it replaces; MLX's own loop runs one element at a time through libm's floor and fma.
#pragma once

namespace macllm_cpu {

// out[i] = MLX's exp(x[i] - shift) for i < n (x[i] - shift rounded to float first, as MLX subtracts).
void exp_shifted(const float* x, float shift, float* out, int n);

}  // namespace macllm_cpu
