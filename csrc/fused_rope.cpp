// Rotary embedding from precomputed cos/sin tables, writing the (B, H, L, D) layout directly.
#include "fused_common.h"
#include "fused_ops.h"
#include "fused_rows.h"

namespace macllm_cpu {

mx::array rotate_heads(const mx::array& x, const mx::array& cos, const mx::array& sin, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  constexpr const char* op = "rotate_heads";
  check_op(stream.device == mx::Device::cpu, op, "runs on the CPU only");
  check_op(x.dtype() == mx::float32 && cos.dtype() == mx::float32 && sin.dtype() == mx::float32, op,
              "x and the tables must be float32");
  check_op(x.ndim() == 4 && cos.ndim() == 2 && sin.shape() == cos.shape(), op,
              "x must be (B, L, H, D) and cos, sin (L, R)");
  check_op(cos.shape(0) == x.shape(1) && 2 * cos.shape(1) <= x.shape(3), op,
              "the tables must have x's length and at most half its head width");
  return mx::array({x.shape(0), x.shape(2), x.shape(1), x.shape(3)}, mx::float32, std::make_shared<RotateHeads>(stream),
                   {x, cos, sin});
}

void RotateHeads::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  run_on_stream(stream(), inputs, outputs, [](std::vector<mx::array>& in, std::vector<mx::array>& out) {
    const mx::array &x = in[0], &cos = in[1], &sin = in[2];
    const int B = x.shape(0), L = x.shape(1), H = x.shape(2), D = x.shape(3), R = cos.shape(1);
    const auto& xs = x.strides();
    const auto& cs = cos.strides();
    const auto& ss = sin.strides();
    const float* xp = x.data<float>();
    float* y = out[0].data<float>();
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < H; ++h) {
        for (int l = 0; l < L; ++l) {
          const float* row = xp + b * xs[0] + l * xs[1] + h * xs[2];
          const float* c = cos.data<float>() + l * cs[0];
          const float* sn = sin.data<float>() + l * ss[0];
          float* dst = y + ((static_cast<size_t>(b) * H + h) * L + l) * D;
          rotate_row(row, xs[3], c, cs[1], sn, ss[1], R, D, dst);
        }
      }
    }
  });
}

std::vector<mx::array> RotateHeads::reference(const std::vector<mx::array>& inputs) {
  const mx::Stream s = stream();
  const mx::array xt = mx::transpose(inputs[0], {0, 2, 1, 3}, s);
  const mx::array &cos = inputs[1], &sin = inputs[2];
  const int R = cos.shape(1), D = xt.shape(3);
  const mx::array x1 = mx::slice(xt, {0, 0, 0, 0}, {xt.shape(0), xt.shape(1), xt.shape(2), R}, s);
  const mx::array x2 = mx::slice(xt, {0, 0, 0, R}, {xt.shape(0), xt.shape(1), xt.shape(2), 2 * R}, s);
  std::vector<mx::array> parts = {mx::subtract(mx::multiply(x1, cos, s), mx::multiply(x2, sin, s), s),
                                  mx::add(mx::multiply(x2, cos, s), mx::multiply(x1, sin, s), s)};
  if (2 * R < D) parts.push_back(mx::slice(xt, {0, 0, 0, 2 * R}, {xt.shape(0), xt.shape(1), xt.shape(2), D}, s));
  return {mx::concatenate(parts, -1, s)};
}

}  // namespace macllm_cpu
