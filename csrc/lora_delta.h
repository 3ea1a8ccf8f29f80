// The LoRA delta the quantized-matmul primitives add to their rows: scale * (x @ a) @ b, in float32, in two
// steps so that the pool's tasks can share the second (qmm_primitive.cpp).
#pragma once

#include "mlx/mlx.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// xa (M x r floats) = x @ a from x's prepared rows (qmm_prepare.h: for 4 bits, each run of 32 reordered), a
// (K, r) float32, float16 or bfloat16.
void lora_input(const float* xp, const mx::array& a, int M, int K, int bits, float* xa);

// Asks for b[:, n0:n1] in the cache ahead of lora_columns: r short pieces of rows far apart, which a task
// otherwise waits for one after another once its rows are done.
void prefetch_columns(const mx::array& b, int n0, int n1);

// out[:, n0:n1] += scale * xa @ b[:, n0:n1] (out has row stride N, b is (r, N)).
void lora_columns(const float* xa, const mx::array& b, int M, int N, int n0, int n1, float scale, float* out);

}  // namespace macllm_cpu
