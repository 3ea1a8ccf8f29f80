// A whole Llama-shaped decoder layer as one MLX node for the CPU decode step (docs/kernels.md,
// "One node per layer"). With one op per norm, projection, rope, cache write and attention a
// SmolLM2 step was ~700 nodes, and their scheduling plus building the graph in Python cost about as
// much as reading the weights. The arithmetic is the per-op path's, row for row (fused_rows.h,
// fused_attend.h, qmm_rows.h), so the result is bit-identical to it.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// One quantized projection as the model hands it: (w, scales, biases, bias, lora_a, lora_b, lora_scale,
// group_size, bits); bias and the adapter's (a, b) may be absent.
using Projection = std::tuple<mx::array, mx::array, mx::array, std::optional<mx::array>, std::optional<mx::array>,
                              std::optional<mx::array>, float, int, int>;

struct LayerShape {
  int n_heads = 0, n_kv_heads = 0, offset = 0;
  float eps_in = 0.0f, eps_post = 0.0f, scale = 0.0f;
  bool causal = false;
  bool qk_norm = false;  // Qwen3: an RMSNorm over each head's queries and keys before rope
  float eps_qk = 0.0f;
};

// h = x + o_proj(attend(rope(q_proj(n)), cache + rope(k_proj(n)), cache + v_proj(n))), n = rms_norm(x);
// out = h + down(silu(gate(m)) * up(m)), m = rms_norm(h). x is (B, L, D) float32; projections are
// q, k, v, o, gate, up, down; cos, sin (L, R) the rope tables for positions offset..offset+L-1; keys
// (B, KV, capacity, Dh) and values (B, KV, capacity, Dv) the cache's float32 buffers, holding `offset`
// positions; q_norm and k_norm (Dh), where given, normalise each head's queries and keys before rope
// (Qwen3). Returns (out, keys, values): the buffers with the L new positions written after `offset`
// (in place when MLX can hand the old buffers over). Inference only: it has no derivatives.
std::vector<mx::array> decoder_layer(const mx::array& x, const mx::array& norm_in, const mx::array& norm_post,
                                     const mx::array& cos, const mx::array& sin, const mx::array& keys,
                                     const mx::array& values, const std::vector<Projection>& projections,
                                     int n_heads, int n_kv_heads, int offset, float eps_in, float eps_post,
                                     float scale, bool causal, const std::optional<mx::array>& q_norm,
                                     const std::optional<mx::array>& k_norm, float eps_qk,
                                     mx::StreamOrDevice s = {});

struct ProjectionSpec {
  int group_size = 0, bits = 0;
  bool bias = false, lora = false;
  float lora_scale = 0.0f;
};

class DecoderLayer : public mx::Primitive {
 public:
  DecoderLayer(mx::Stream s, LayerShape shape, std::vector<ProjectionSpec> specs)
      : mx::Primitive(s), shape_(shape), specs_(std::move(specs)) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
  const char* name() const override { return "MacllmDecoderLayer"; }
  bool is_equivalent(const mx::Primitive&) const override { return false; }

 private:
  LayerShape shape_;
  std::vector<ProjectionSpec> specs_;
};

}  // namespace macllm_cpu
