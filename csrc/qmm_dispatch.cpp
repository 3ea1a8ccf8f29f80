#include "qmm_dispatch.h"

#include <atomic>
#include <stdexcept>

#include "cpu_features.h"

namespace macllm_cpu {
namespace {

struct Isa {
  const char* name;
  RowsFn fn;
  DequantFn dequant;
};

std::vector<Isa> supported() {
  std::vector<Isa> isas;
#if defined(__x86_64__) || defined(_M_X64)
  if (cpu_has_avx512()) isas.push_back({"avx512", rows_avx512, dequant_avx512});
  if (cpu_has_avx2()) isas.push_back({"avx2", rows_avx2, dequant_scalar});
#endif
#if defined(__aarch64__)
  isas.push_back({"neon", rows_neon, dequant_scalar});
#endif
  isas.push_back({"scalar", rows_scalar, dequant_scalar});
  return isas;
}

const std::vector<Isa>& isas() {
  static const std::vector<Isa> list = supported();
  return list;
}

std::atomic<int> chosen{0};  // index into isas()
std::atomic<bool> int8_on{false};

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const auto& isa : isas()) names.emplace_back(isa.name);
  return names;
}

std::string current_isa() { return isas()[chosen.load()].name; }

void set_isa(const std::string& name) {
  for (size_t i = 0; i < isas().size(); ++i) {
    if (name == isas()[i].name) {
      chosen.store(static_cast<int>(i));
      return;
    }
  }
  throw std::invalid_argument("this CPU has no '" + name + "' kernel");
}

RowsFn current_rows() { return isas()[chosen.load()].fn; }

DequantFn current_dequant() { return isas()[chosen.load()].dequant; }

bool int8_available() {
  static const bool has = cpu_has_vnni();
  return has;
}

bool int8_enabled() { return int8_on.load(); }

void set_int8(bool on) {
  if (on && !int8_available()) throw std::invalid_argument("int8 activations need a CPU with AVX-512 VNNI and VBMI");
  int8_on.store(on);
}

RowsFn current_int8_rows(int bits) {
  (void)bits;  // every width has an int8 path
#if defined(__x86_64__) || defined(_M_X64)
  if (int8_on.load() && current_rows() == rows_avx512) return rows_avx512_vnni;
#endif
  return nullptr;
}

}  // namespace macllm_cpu
