// Reading arrays where they lie: inputs may be views (slices, transposes), never copied first.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mlx/mlx.h"

namespace macllm_cpu {

namespace mx = mlx::core;

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

}  // namespace macllm_cpu
