// Which row kernel runs: the best the CPU supports, or one chosen for tests (set_isa).
#pragma once

#include <string>
#include <vector>

#include "qmm_kernels.h"

namespace macllm_cpu {

std::vector<std::string> available_isas();  // best first; "scalar" always last
std::string current_isa();
void set_isa(const std::string& name);  // throws std::invalid_argument if the CPU lacks it
RowsFn current_rows();
DequantFn current_dequant();

}  // namespace macllm_cpu
