// Helpers the fused ops share: strided row addressing and running a kernel on the CPU stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "op_check.h"
#include "strided.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// Allocates the outputs (those an op has not already given memory, e.g. a donated input's) and runs
// fn(inputs, outputs) on the stream's worker thread, where MLX runs every CPU kernel in graph order.
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
    if (o.data_shared_ptr() == nullptr) o.set_data(mx::allocator::malloc(o.nbytes()));
    encoder.set_output_array(o);
    out.push_back(mx::array::unsafe_weak_copy(o));
  }
  encoder.dispatch([in = std::move(in), out = std::move(out), fn]() mutable { fn(in, out); });
}

}  // namespace macllm_cpu
