// Mixture-of-experts projections on our row kernels: each row of x times the quantized matrix of
// the expert its index names (mx.gather_qmm with transpose=True, affine, right-hand indices only).
#pragma once

#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// x (..., M, K) float; w (E, N, K * bits / 32) uint32; scales, biases (E, N, K / group_size);
// indices: integers whose shape broadcasts with x's leading dims. Returns
// broadcast(x.shape[:-2], indices.shape) + (M, N) in x's and the scales' promoted type. Runs of equal
// consecutive indices (the sorted prefill layout) share each weight read across their rows.
mx::array gather_quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                                  const mx::array& biases, const mx::array& indices, int group_size, int bits,
                                  mx::StreamOrDevice s = {});

class GatherQuantizedMatmul : public mx::UnaryPrimitive {
 public:
  GatherQuantizedMatmul(mx::Stream stream, int group_size, int bits)
      : mx::UnaryPrimitive(stream), group_size_(group_size), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  const char* name() const override { return "MacllmCpuGatherQuantizedMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int group_size_;
  int bits_;
};

}  // namespace macllm_cpu
