// Fused float32 ops for the CPU decode step (docs/kernels.md, "Fused decode ops"). On the CPU backend
// MLX composes rms_norm, rope and attention from 8-15 small ops each, and every op costs ~5-10 us of
// scheduling: for a 30-layer model that was more time per token than all the matmuls. Each op here is
// one graph node. Gradients are the reference composition's (FusedPrimitive::vjp), so training through
// a model that uses them stays exact.
#pragma once

#include <functional>

#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace macllm_cpu {

namespace mx = mlx::core;

// x * rsqrt(mean(x^2, -1) + eps) * w over the last axis (mx.fast.rms_norm).
mx::array rms_norm(const mx::array& x, const mx::array& w, float eps, mx::StreamOrDevice s = {});

// (h, rms_norm(h, w, eps)) with h = x + r: the residual add and the next norm in one pass.
std::vector<mx::array> residual_rms_norm(const mx::array& x, const mx::array& r, const mx::array& w, float eps,
                                         mx::StreamOrDevice s = {});

// Rotary embedding from cos/sin tables, Hugging Face's half-split pairs: x (B, L, H, D) as projected;
// cos, sin (L, R) for the first 2R features (the rest pass through). Returns (B, H, L, D), the layout
// the KV cache and attention want, so the transpose is free.
mx::array rotate_heads(const mx::array& x, const mx::array& cos, const mx::array& sin, mx::StreamOrDevice s = {});

// softmax(q k^T * scale [+ causal mask]) v with grouped-query heads: q (B, H, Lq, D); k, v (B, KV, S, D)
// with any strides (slices of the cache's buffers). The causal mask aligns the queries to the last Lq
// keys (mx.fast.scaled_dot_product_attention's "causal"). Returns (B, Lq, H * Dv), ready for o_proj.
mx::array attend(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal,
                 mx::StreamOrDevice s = {});

// softmax(scores * scale) over the last axis with the causal mask: scores (..., R, S) where each run of
// `queries` rows holds one query head's rows (grouped-query heads stack several), query i seeing keys
// up to S - queries + i. Prefill's attention: the matmuls around it stay MLX's (BLAS).
mx::array causal_softmax(const mx::array& scores, float scale, int queries, mx::StreamOrDevice s = {});

// silu(g) * u, SwiGLU's gate.
mx::array silu_mul(const mx::array& g, const mx::array& u, mx::StreamOrDevice s = {});

// A CPU-only primitive whose derivatives are those of its reference composition of MLX ops.
class FusedPrimitive : public mx::Primitive {
 public:
  explicit FusedPrimitive(mx::Stream stream) : mx::Primitive(stream) {}

  // The same result from MLX's own ops: the gradient's definition, and the tests' oracle.
  virtual std::vector<mx::array> reference(const std::vector<mx::array>& inputs) = 0;

  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
};

class RmsNorm : public FusedPrimitive {
 public:
  RmsNorm(mx::Stream s, float eps, bool residual) : FusedPrimitive(s), eps_(eps), residual_(residual) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> reference(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return residual_ ? "MacllmResidualRmsNorm" : "MacllmRmsNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  float eps_;
  bool residual_;  // inputs (x, r, w) -> (x + r, norm); else (x, w) -> norm
};

class RotateHeads : public FusedPrimitive {
 public:
  explicit RotateHeads(mx::Stream s) : FusedPrimitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> reference(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "MacllmRotateHeads"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

class Attend : public FusedPrimitive {
 public:
  Attend(mx::Stream s, float scale, bool causal) : FusedPrimitive(s), scale_(scale), causal_(causal) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> reference(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "MacllmAttend"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  float scale_;
  bool causal_;
};

class CausalSoftmax : public FusedPrimitive {
 public:
  CausalSoftmax(mx::Stream s, float scale, int queries) : FusedPrimitive(s), scale_(scale), queries_(queries) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> reference(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "MacllmCausalSoftmax"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  float scale_;
  int queries_;
};

class SiluMul : public FusedPrimitive {
 public:
  explicit SiluMul(mx::Stream s) : FusedPrimitive(s) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  std::vector<mx::array> reference(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "MacllmSiluMul"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

}  // namespace macllm_cpu
