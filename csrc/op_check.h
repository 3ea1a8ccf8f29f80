// How every op of the extension refuses bad input: std::invalid_argument, which MLX's bindings turn
// into a one-line Python ValueError naming the op.
#pragma once

#include <stdexcept>
#include <string>

namespace macllm_cpu {

inline void check_op(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("[macllm ") + op + "] " + what);
}

}  // namespace macllm_cpu
