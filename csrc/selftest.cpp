// Standalone check of the row kernels without MLX: every variant this CPU runs against the scalar
// kernel on random packed weights (all bit widths, group sizes, 1..8 rows, three scale types), and the
// int8-activation kernel (AVX-512 VNNI) against rows_int8_scalar where the CPU has it.
// Used to test the NEON kernel under emulation on an x86 machine (scripts/check_kernels_arm64.sh);
// the tests against mx.quantized_matmul (tests/test_cpu_kernels.py) are the main oracle.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "qmm_dispatch.h"
#include "qmm_kernels.h"

using namespace macllm_cpu;

namespace {

uint16_t to_half(float f) {  // round-to-nearest is not needed: both kernels read the same bits
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000;
  const int exp = static_cast<int>((x >> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (exp << 10) | ((x >> 13) & 0x3ff));
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  int failures = 0, checks = 0;
  const int widths[] = {2, 3, 4, 5, 6, 8};
  const int groups[] = {32, 64, 128};
  for (int bits : widths) {
    for (int group_size : groups) {
      for (int M = 1; M <= kMaxRows; ++M) {
        for (int st = 0; st < 3; ++st) {
          const int N = 37, K = 896;  // one int8 chunk of 512 values and a tail of 384
          const int G = K / group_size;
          const size_t row_bytes = static_cast<size_t>(K) * bits / 8;
          std::vector<uint8_t> w(N * row_bytes);
          for (auto& b : w) b = static_cast<uint8_t>(rng());
          std::vector<float> sf(N * G), bf(N * G);
          for (auto& v : sf) v = uni(rng) * 0.1f;
          for (auto& v : bf) v = uni(rng) * 0.1f;
          std::vector<uint16_t> sh(N * G), bh(N * G);
          for (size_t i = 0; i < sf.size(); ++i) {
            if (st == 1) {
              sh[i] = to_half(sf[i]);
              bh[i] = to_half(bf[i]);
            } else {
              uint32_t a, b;
              std::memcpy(&a, &sf[i], 4);
              std::memcpy(&b, &bf[i], 4);
              sh[i] = static_cast<uint16_t>(a >> 16);
              bh[i] = static_cast<uint16_t>(b >> 16);
            }
          }
          std::vector<float> x(M * K), xsum(M * G, 0.0f);
          for (auto& v : x) v = uni(rng);
          for (int m = 0; m < M; ++m)
            for (int k = 0; k < K; ++k) xsum[m * G + k / group_size] += x[m * K + k];  // order-free: a sum
          Problem p{x.data(), xsum.data(), w.data(),
                    st == 0 ? static_cast<const void*>(sf.data()) : sh.data(),
                    st == 0 ? static_cast<const void*>(bf.data()) : bh.data(),
                    static_cast<ScaleType>(st), nullptr, M, N, K, group_size, bits};
          std::vector<float> want(M * N), got(M * N);
          if (int8_available()) {  // the int8 path against its scalar semantics
            std::vector<int8_t> xq(M * K);
            std::vector<float> xq_scale(M * K / 32 * kScaleLanes), xq_sum(M * G);
            quantize_rows_int8(x.data(), M, K, group_size, xq.data(), xq_scale.data(), xq_sum.data());
            Problem q = p;
            q.xq = xq.data();
            q.xq_scale = xq_scale.data();
            q.xsum = xq_sum.data();
            std::vector<int8_t> chunks(M * int8_chunks(K) * kChunkValues);
            std::vector<float> chunk_scale(M * int8_chunks(K) * kChunkScales);
            if (int8_chunked(K)) {
              chunk_int8_rows(xq.data(), xq_scale.data(), M, K, bits, chunks.data(), chunk_scale.data());
              q.xq_chunks = chunks.data();
              q.xq_chunk_scale = chunk_scale.data();
            }
            q.out = want.data();
            rows_int8_scalar(q, 0, N);
            q.out = got.data();
#if defined(__x86_64__) || defined(_M_X64)
            rows_avx512_vnni(q, 0, N);
#endif
            for (int i = 0; i < M * N; ++i) {
              ++checks;
              if (std::fabs(got[i] - want[i]) > 1e-4f * (1.0f + std::fabs(want[i]))) {
                if (failures++ < 10) {
                  std::printf("MISMATCH int8 bits %d group %d rows %d scales %d: %g vs %g\n", bits, group_size, M,
                              st, got[i], want[i]);
                }
              }
            }
          }
          p.out = want.data();
          rows_scalar(p, 0, N);
          for (const auto& isa : available_isas()) {
            set_isa(isa);
            p.out = got.data();
            current_rows()(p, 0, N);
            for (int i = 0; i < M * N; ++i) {
              ++checks;
              if (std::fabs(got[i] - want[i]) > 1e-3f * (1.0f + std::fabs(want[i]))) {
                if (failures++ < 10) {
                  std::printf("MISMATCH %s bits %d group %d rows %d scales %d: %g vs %g\n", isa.c_str(), bits,
                              group_size, M, st, got[i], want[i]);
                }
              }
            }
          }
        }
      }
    }
  }
  std::printf("%s: %d values compared over", failures ? "FAILED" : "ok", checks);
  for (const auto& isa : available_isas()) std::printf(" %s", isa.c_str());
  if (int8_available()) std::printf(" avx512_vnni (int8)");
  std::printf("\n");
  return failures ? 1 : 0;
}
