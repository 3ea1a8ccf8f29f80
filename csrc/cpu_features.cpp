#include "cpu_features.h"

namespace macllm_cpu {

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
// (__builtin_cpu_supports takes only string literals, hence one line per feature.)
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}
bool cpu_has_avx512_attention() {
  return cpu_has_avx512() && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("fma");
}
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool cpu_has_vnni() {
  return cpu_has_avx512() && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi");
}
#else
bool cpu_has_avx512() { return false; }
bool cpu_has_avx512_attention() { return false; }
bool cpu_has_avx2() { return false; }
bool cpu_has_vnni() { return false; }
#endif

}  // namespace macllm_cpu
