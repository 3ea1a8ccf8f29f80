// RMSNorm, alone or after the residual add, in one pass over each row.
#include "fused_common.h"
#include "fused_ops.h"
#include "fused_rows.h"

namespace macllm_cpu {
namespace {

constexpr const char* kOp = "rms_norm";

void check_norm_inputs(const mx::array& x, const mx::array& w, const mx::Stream& s) {
  check_op(s.device == mx::Device::cpu, kOp, "runs on the CPU only");
  check_op(x.dtype() == mx::float32 && w.dtype() == mx::float32, kOp, "x and w must be float32");
  check_op(x.ndim() >= 1 && w.ndim() == 1 && w.shape(0) == x.shape(-1), kOp, "w must have x's last dimension");
}

}  // namespace

mx::array rms_norm(const mx::array& x, const mx::array& w, float eps, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check_norm_inputs(x, w, stream);
  return mx::array(x.shape(), mx::float32, std::make_shared<RmsNorm>(stream, eps, false), {x, w});
}

std::vector<mx::array> residual_rms_norm(const mx::array& x, const mx::array& r, const mx::array& w, float eps,
                                         mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check_norm_inputs(x, w, stream);
  check_op(r.shape() == x.shape() && r.dtype() == mx::float32, kOp, "the residual must match x");
  return mx::array::make_arrays({x.shape(), x.shape()}, {mx::float32, mx::float32},
                                std::make_shared<RmsNorm>(stream, eps, true), {x, r, w});
}

void RmsNorm::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  run_on_stream(stream(), inputs, outputs, [eps = eps_, residual = residual_](std::vector<mx::array>& in,
                                                                              std::vector<mx::array>& out) {
    const mx::array& x = in[0];
    const mx::array* r = residual ? &in[1] : nullptr;
    const mx::array& w = in.back();
    const int D = static_cast<int>(x.shape(-1));
    if (D == 0) return;
    const size_t rows = x.size() / D;
    float* y = out.back().data<float>();
    float* h = residual ? out[0].data<float>() : nullptr;
    for (size_t row = 0; row < rows; ++row) {
      norm_row(x.data<float>() + row_offset(x, row), x.strides().back(),
               r != nullptr ? r->data<float>() + row_offset(*r, row) : nullptr, r != nullptr ? r->strides().back() : 0,
               w.data<float>(), w.strides()[0], D, eps, h != nullptr ? h + row * D : nullptr, y + row * D);
    }
  });
}

std::vector<mx::array> RmsNorm::reference(const std::vector<mx::array>& inputs) {
  const mx::Stream s = stream();
  if (!residual_) return {mx::fast::rms_norm(inputs[0], inputs[1], eps_, s)};
  const mx::array h = mx::add(inputs[0], inputs[1], s);
  return {h, mx::fast::rms_norm(h, inputs[2], eps_, s)};
}

bool RmsNorm::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const RmsNorm&>(other);
  return eps_ == o.eps_ && residual_ == o.residual_;
}

}  // namespace macllm_cpu
