// The x86-64 features our kernels are built for, asked of the CPU in this one place: qmm_dispatch.cpp picks the
// row kernels by them, fused_attention.cpp its attention build. All false on other architectures.
#pragma once

namespace macllm_cpu {

bool cpu_has_avx512();            // AVX-512 F and BW: the avx512 row kernels
bool cpu_has_avx512_attention();  // those with DQ, VL and FMA: the AVX-512 build of attention
bool cpu_has_avx2();              // AVX2, FMA and F16C
bool cpu_has_vnni();              // AVX-512 F, BW, VL, VNNI and VBMI: the int8 row kernels

}  // namespace macllm_cpu
