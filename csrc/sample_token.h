// Choosing the next token from a decode step's logits in one node (docs/kernels.md, "Choosing the token").
// On the CPU backend the MLX composition it replaces (macllm/generation/sampling.py: logsumexp, argmax or
// the filters and draw of macllm/kernels/sample_filter.py, argpartition for the alternatives) is 10-40
// nodes with a scalar exp per logit, 0.7-4.5 ms per token on a 49k vocabulary; this is one pass or a few.
#pragma once

#include <optional>
#include <vector>

#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace macllm_cpu {

namespace mx = mlx::core;

struct SampleSettings {
  float temperature = 0.0f;  // 0: greedy
  int top_k = 0;             // used when 0 < top_k < vocab
  double top_p = 1.0;        // used when < 1
  double min_p = 0.0;        // used when > 0
  int alternatives = 0;      // how many most likely tokens to return besides the choice
};

// logits (..., V) float32 -> {token (...) uint32, its log-probability (...) float32} and, when
// settings.alternatives > 0, {the most likely tokens (..., k) uint32, their log-probabilities (..., k)},
// most likely first, ties by lower id. Log-probabilities are of the unfiltered distribution,
// logits - logsumexp(logits). Greedy is the first argmax; with a temperature `u` (...) holds one uniform
// in [0, 1) per row (drawn by MLX, so a seed reproduces) and the token is drawn as
// sample_filter.reference draws it: the same bits, hence the same token, on x86-64.
std::vector<mx::array> choose_token(const mx::array& logits, const std::optional<mx::array>& u,
                                    const SampleSettings& settings, mx::StreamOrDevice s = {});

class ChooseToken : public mx::Primitive {
 public:
  ChooseToken(mx::Stream s, SampleSettings settings) : mx::Primitive(s), settings_(settings) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  const char* name() const override { return "MacllmChooseToken"; }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  SampleSettings settings_;
};

}  // namespace macllm_cpu
