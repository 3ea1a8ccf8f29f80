// Our quantized matmul on plain float rows, for ops that chain several products inside one graph node
// (the decoder layer, fused_layer.cpp). Same arithmetic as the quantized_matmul op.
#pragma once

#include "mlx/mlx.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// One quantized linear layer's arrays, all row-contiguous and evaluated: w (N, K * bits / 32) uint32,
// scales and biases (N, K / group_size); a (K, r) and b (r, N) float when an adapter rides on it.
struct QuantOperands {
  const mx::array *w = nullptr, *scales = nullptr, *biases = nullptr;
  const mx::array *a = nullptr, *b = nullptr;
  float lora_scale = 0.0f;
  int group_size = 0, bits = 0;
};

// out (M x N floats, row stride N) = x (M x K contiguous float32) @ dequantize(w)^T [+ scale * (x a) b].
void quantized_rows(const float* x, int M, const QuantOperands& q, float* out);

// Several products of the same x (the layer's q, k and v; gate and up) with one pass of the thread pool
// instead of one each: outs[i] = x @ dequantize(ops[i].w)^T [+ delta]. Same arithmetic per product.
void quantized_rows_many(const float* x, int M, const QuantOperands* ops, float* const* outs, int count);

}  // namespace macllm_cpu
