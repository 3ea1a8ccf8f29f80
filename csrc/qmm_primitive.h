// The MLX side: an op building a graph node, and the Primitive that runs our row kernels on the
// CPU stream's worker thread (split over the pool).
#pragma once

#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// x @ dequantize(w, scales, biases)^T, what nn.QuantizedLinear computes (mx.quantized_matmul with
// transpose=True, mode "affine"). x: (..., K) float; w: (N, K * bits / 32) uint32; scales, biases:
// (N, K / group_size) float. The result has x's leading shape, N columns and the promoted type of
// x and scales. Runs on the CPU stream given (default: the current default stream).
mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group_size, int bits, mx::StreamOrDevice s = {});

// The same plus a LoRA delta in one node: x @ dequantize(w)^T + scale * (x @ a) @ b, with a: (K, r) and
// b: (r, N) float (an adapter on a quantized base layer; computed in float32, one rounding at the end).
mx::array quantized_matmul_lora(const mx::array& x, const mx::array& w, const mx::array& scales,
                                const mx::array& biases, const mx::array& a, const mx::array& b, float scale,
                                int group_size, int bits, mx::StreamOrDevice s = {});

// Rows of x from which prefill goes through dequantized tiles and sgemm (0: never), and whether a fast
// sgemm was found in the process at all.
void set_prefill_rows(int rows);
int get_prefill_rows();
bool prefill_uses_sgemm();

class QuantizedMatmul : public mx::UnaryPrimitive {
 public:
  QuantizedMatmul(mx::Stream stream, int group_size, int bits, bool lora = false, float lora_scale = 0.0f)
      : mx::UnaryPrimitive(stream), group_size_(group_size), bits_(bits), lora_(lora), lora_scale_(lora_scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

  const char* name() const override { return "MacllmCpuQuantizedMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int group_size_;
  int bits_;
  bool lora_;  // inputs 4 and 5 are the adapter's a and b
  float lora_scale_;
};

}  // namespace macllm_cpu
