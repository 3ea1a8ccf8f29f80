// SwiGLU's gate, silu(g) * u, as one op (MLX: a compiled sigmoid-multiply and a multiply).
#include "fused_common.h"
#include "fused_ops.h"
#include "fused_rows.h"

namespace macllm_cpu {

mx::array silu_mul(const mx::array& g, const mx::array& u, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check_op(stream.device == mx::Device::cpu, "silu_mul", "runs on the CPU only");
  check_op(g.dtype() == mx::float32 && u.dtype() == mx::float32 && g.shape() == u.shape() && g.ndim() >= 1,
              "silu_mul", "g and u must be float32 arrays of one shape");
  return mx::array(g.shape(), mx::float32, std::make_shared<SiluMul>(stream), {g, u});
}

void SiluMul::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  run_on_stream(stream(), inputs, outputs, [](std::vector<mx::array>& in, std::vector<mx::array>& out) {
    const mx::array &g = in[0], &u = in[1];
    const int D = static_cast<int>(g.shape(-1));
    if (D == 0) return;
    const size_t rows = g.size() / D;
    const int64_t gs = g.strides().back(), us = u.strides().back();
    float* y = out[0].data<float>();
    for (size_t row = 0; row < rows; ++row) {
      const float* gp = g.data<float>() + row_offset(g, row);
      const float* up = u.data<float>() + row_offset(u, row);
      float* yp = y + row * D;
      for (int d = 0; d < D; ++d) {
        yp[d] = silu_times(gp[d * gs], up[d * us]);
      }
    }
  });
}

std::vector<mx::array> SiluMul::reference(const std::vector<mx::array>& inputs) {
  const mx::Stream s = stream();
  const mx::array& g = inputs[0];
  return {mx::multiply(mx::multiply(g, mx::sigmoid(g, s), s), inputs[1], s)};
}

}  // namespace macllm_cpu
