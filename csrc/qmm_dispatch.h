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

// int8 activations (qmm_avx512_vnni.cpp): available where the CPU has AVX-512 VNNI and VBMI; used when
// switched on (set_int8) and the chosen kernel is avx512.
bool int8_available();
bool int8_enabled();
void set_int8(bool on);  // throws std::invalid_argument if on and the CPU lacks them
// The int8 row kernel for this many bits, or nullptr where the float kernels run.
RowsFn current_int8_rows(int bits);

}  // namespace macllm_cpu
