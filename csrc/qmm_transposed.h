// cot @ dequantize(w) on the CPU: mx.quantized_matmul with transpose=False, the backward product of
// our forward kernel (qmm_primitive.h).
#pragma once

#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "qmm_primitive.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// cot (..., N) float; w (N, K * bits / 32) uint32; scales, biases (N, K / group_size). Returns (..., K).
mx::array quantized_matmul_transposed(const mx::array& cot, const mx::array& w, const mx::array& scales,
                                      const mx::array& biases, int group_size, int bits, mx::StreamOrDevice s = {});

class TransposedQuantizedMatmul : public mx::UnaryPrimitive {
 public:
  TransposedQuantizedMatmul(mx::Stream stream, int group_size, int bits)
      : mx::UnaryPrimitive(stream), group_size_(group_size), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  const char* name() const override { return "MacllmCpuTransposedQuantizedMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int group_size_;
  int bits_;
};

}  // namespace macllm_cpu
