// Attention of a few query rows over the KV cache, shared by the attend op (fused_attention.cpp) and
// the whole decoder layer (fused_layer.cpp).
#pragma once

#include <cstdint>

namespace macllm_cpu {

// q (B, H, Lq, D), k (B, KV, >= S, D), v (B, KV, >= S, Dv) by element strides, read where they lie;
// the first S positions of k and v are attended to. out is (B, Lq, H * Dv), contiguous.
struct AttendJob {
  const float *q, *k, *v;
  int64_t qs[4], ks[4], vs[4];
  float* out;
  float scale;
  bool causal;  // query i sits at position S - Lq + i and sees keys up to it
  int B, H, KV, Lq, S, D, Dv;
};

// All (batch, head) pairs: on the calling thread when the work is small, else over the pool.
void run_attend(AttendJob& job);

}  // namespace macllm_cpu
