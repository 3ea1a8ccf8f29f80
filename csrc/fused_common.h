// Helpers the fused ops share: strided row addressing and running a kernel on the CPU stream.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"

namespace macllm_cpu {

namespace mx = mlx::core;

inline void check_fused(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("[macllm ") + op + "] " + what);
}

// Element offset of row `r` of `a`, the row being the last axis and the leading axes flattened in
// row-major order: inputs may be views (slices, transposes) and are read where they lie.
inline int64_t row_offset(const mx::array& a, size_t r) {
  int64_t offset = 0;
  for (int d = static_cast<int>(a.ndim()) - 2; d >= 0; --d) {
    offset += static_cast<int64_t>(r % a.shape(d)) * a.strides()[d];
    r /= a.shape(d);
  }
  return offset;
}

// Allocates the outputs and runs fn(inputs, outputs) on the stream's worker thread, where MLX runs
// every CPU kernel in graph order.
template <typename Fn>
void run_on_stream(const mx::Stream& stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs,
                   Fn fn) {
  auto& encoder = mx::cpu::get_command_encoder(stream);
  std::vector<mx::array> in, out;
  for (const auto& a : inputs) {
    encoder.set_input_array(a);
    in.push_back(mx::array::unsafe_weak_copy(a));
  }
  for (auto& o : outputs) {
    o.set_data(mx::allocator::malloc(o.nbytes()));
    encoder.set_output_array(o);
    out.push_back(mx::array::unsafe_weak_copy(o));
  }
  encoder.dispatch([in = std::move(in), out = std::move(out), fn]() mutable { fn(in, out); });
}

}  // namespace macllm_cpu
