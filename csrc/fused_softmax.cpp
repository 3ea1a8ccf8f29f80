// The attention softmax for prefill: scale, causal mask and a max-subtracted softmax over each row
// of scores in one pass. MLX's CPU softmax calls a scalar exp; this one is written so the compiler
// vectorizes it (a polynomial exp with no branches or calls), and it replaces the scale multiply and
// the mask's select as well.
#include <cmath>
#include <cstdint>
#include <limits>

#include "fused_common.h"
#include "fused_ops.h"
#include "fused_rows.h"

namespace macllm_cpu {

mx::array causal_softmax(const mx::array& scores, float scale, int queries, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  constexpr const char* op = "causal_softmax";
  check_op(stream.device == mx::Device::cpu, op, "runs on the CPU only");
  check_op(scores.dtype() == mx::float32 && scores.ndim() >= 2, op, "scores must be float32 (..., rows, keys)");
  check_op(queries >= 1 && scores.shape(-2) % queries == 0 && queries <= scores.shape(-1), op,
              "rows must be a multiple of the query count, which cannot exceed the keys");
  return mx::array(scores.shape(), mx::float32, std::make_shared<CausalSoftmax>(stream, scale, queries), {scores});
}

void CausalSoftmax::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  run_on_stream(stream(), inputs, outputs, [scale = scale_, queries = queries_](std::vector<mx::array>& in,
                                                                                std::vector<mx::array>& out) {
    const mx::array& x = in[0];
    const int S = static_cast<int>(x.shape(-1)), R = static_cast<int>(x.shape(-2));
    if (S == 0) return;
    const size_t rows = x.size() / S;
    const int64_t xs = x.strides().back();
    float* y = out[0].data<float>();
    for (size_t row = 0; row < rows; ++row) {
      const float* src = x.data<float>() + row_offset(x, row);
      float* dst = y + row * S;
      // Rows of one (batch, kv head) are the grouped query heads' rows, each `queries` long.
      const int query = static_cast<int>(row % R) % queries;
      const int visible = S - queries + query + 1;
      float top = -std::numeric_limits<float>::infinity();
      for (int t = 0; t < visible; ++t) {
        dst[t] = src[t * xs] * scale;
        top = dst[t] > top ? dst[t] : top;
      }
      float total = 0.0f;
      for (int t = 0; t < visible; ++t) {
        dst[t] = exp_nonpositive(dst[t] - top);
        total += dst[t];
      }
      const float inv = 1.0f / total;
      for (int t = 0; t < visible; ++t) dst[t] *= inv;
      for (int t = visible; t < S; ++t) dst[t] = 0.0f;
    }
  });
}

std::vector<mx::array> CausalSoftmax::reference(const std::vector<mx::array>& inputs) {
  const mx::Stream s = stream();
  const mx::array& x = inputs[0];
  const int S = x.shape(-1), R = x.shape(-2);
  // Row r is query r % queries, at position S - queries + r % queries; key t is visible up to it.
  const mx::array rows = mx::reshape(mx::remainder(mx::arange(R, s), mx::array(queries_), s), {R, 1}, s);
  const mx::array keys = mx::reshape(mx::arange(S, s), {1, S}, s);
  const mx::array visible = mx::less_equal(keys, mx::add(rows, mx::array(S - queries_), s), s);
  const mx::array scaled = mx::multiply(x, mx::array(scale_), s);
  const mx::array masked = mx::where(visible, scaled, mx::array(-std::numeric_limits<float>::infinity()), s);
  return {mx::softmax(masked, std::vector<int>{-1}, true, s)};
}

bool CausalSoftmax::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const CausalSoftmax&>(other);
  return scale_ == o.scale_ && queries_ == o.queries_;
}

}  // namespace macllm_cpu
