// What every fused op shares: no GPU kernel (Metal has mx.fast's), and derivatives taken through the
// reference composition, so a model using the fused ops trains exactly as with MLX's own.
#include <stdexcept>

#include "fused_ops.h"

namespace macllm_cpu {

void FusedPrimitive::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error(std::string("[macllm ") + name() + "] runs on the CPU only (Metal uses mx.fast)");
}

std::vector<mx::array> FusedPrimitive::vjp(const std::vector<mx::array>& primals,
                                           const std::vector<mx::array>& cotangents,
                                           const std::vector<int>& argnums, const std::vector<mx::array>&) {
  auto fn = [this](const std::vector<mx::array>& in) { return reference(in); };
  const auto grads = mx::vjp(fn, primals, cotangents).second;
  std::vector<mx::array> picked;
  for (int arg : argnums) picked.push_back(grads[arg]);
  return picked;
}

std::vector<mx::array> FusedPrimitive::jvp(const std::vector<mx::array>& primals,
                                           const std::vector<mx::array>& tangents, const std::vector<int>& argnums) {
  // Tangents come for `argnums` only; the other inputs are held constant.
  std::vector<mx::array> full;
  for (const auto& p : primals) full.push_back(mx::zeros_like(p, stream()));
  for (size_t i = 0; i < argnums.size(); ++i) full[argnums[i]] = tangents[i];
  auto fn = [this](const std::vector<mx::array>& in) { return reference(in); };
  return mx::jvp(fn, primals, full).second;
}

std::pair<std::vector<mx::array>, std::vector<int>> FusedPrimitive::vmap(const std::vector<mx::array>&,
                                                                         const std::vector<int>&) {
  throw std::runtime_error(std::string("[macllm ") + name() + "] has no vmap");
}

}  // namespace macllm_cpu
