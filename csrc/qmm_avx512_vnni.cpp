// AVX-512 VNNI row kernel: int8 activations (Problem::xq, quantized per block of 32 by
// quantize_rows_int8) times the weights' unsigned codes (any width) with vpdpbusd (16 int32 lanes, each
// the sum of 4 byte products). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512vbmi;
// called only when the CPU has them (qmm_dispatch.cpp). A Problem without xq takes rows_avx512.
//
// Per pair of blocks (64 values): the weights' codes as 64 bytes, shared by all rows (Codes). Per row,
// one vpdpbusd puts block b's integer partial sums in lanes 0-7 and block b+1's in lanes 8-15; they are
// converted to float, multiplied by the blocks' activation scales and multiply-added with the blocks'
// weight scales. The biases' term uses the quantized activations' group sums (quantize_rows_int8).
// A row's arithmetic does not depend on how many rows are computed with it.
#include <immintrin.h>

#include "qmm_avx512_rows.h"
#include "qmm_kernels.h"

namespace macllm_cpu {
namespace {

// The weights' codes of a row as unsigned bytes: pair(wr, b) gives blocks b and b+1 (64 bytes), block(wr,
// b) block b alone (32 bytes, a row with an odd number of blocks). 4 bits: a block's 16 low nibbles then
// its 16 high ones (the order x's block is kept in); 8 bits: the bytes. 2, 3, 5 and 6 bits (a
// little-endian bit stream): 8 values take BITS bytes, so each 64-bit lane gets the BITS bytes of its 8
// values (vpermb) and byte j then takes the BITS bits at bit BITS * j of its lane (vpmultishiftqb).
template <int BITS>
struct Codes {
  __m512i perm, shifts;
  Codes() {
    alignas(64) uint8_t p[64], sh[64];
    for (int i = 0; i < 64; ++i) {
      const int lane = i / 8, j = i % 8;
      p[i] = static_cast<uint8_t>(j < BITS ? lane * BITS + j : 0);
      sh[i] = static_cast<uint8_t>(BITS * j);
    }
    perm = _mm512_load_si512(p);
    shifts = _mm512_load_si512(sh);
  }
  __attribute__((always_inline)) __m512i packed(const uint8_t* src, int bytes) const {
    const __m512i raw = _mm512_maskz_loadu_epi8(_cvtu64_mask64((~0ULL) >> (64 - bytes)), src);  // never past the row
    return _mm512_and_si512(_mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(perm, raw)),
                            _mm512_set1_epi8(static_cast<char>((1 << BITS) - 1)));
  }
  __attribute__((always_inline)) __m512i pair(const uint8_t* wr, int b) const {
    if constexpr (BITS == 4) {
      const __m512i raw = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + b * 16)));
      // 128-bit chunks p0 p0 p1 p1; the second of each pair shifted down to its high nibbles.
      const __m512i spread = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), raw);
      return _mm512_and_si512(_mm512_srlv_epi64(spread, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)),
                              _mm512_set1_epi8(15));
    } else if constexpr (BITS == 8) {
      return _mm512_loadu_si512(wr + b * 32);
    } else {
      return packed(wr + b * 4 * BITS, 8 * BITS);
    }
  }
  __attribute__((always_inline)) __m256i block(const uint8_t* wr, int b) const {
    if constexpr (BITS == 4) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + b * 16));
      const __m128i low4 = _mm_set1_epi8(15);
      return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), _mm_and_si128(raw, low4));
    } else if constexpr (BITS == 8) {
      return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + b * 32));
    } else {
      return _mm512_castsi512_si256(packed(wr + b * 4 * BITS, 4 * BITS));
    }
  }
};

// A tile of NB weight rows (n..n+NB-1) against M activation rows: each activation load serves NB
// weight rows and each unpacked weight vector M activation rows, which keeps the loads from L1/L2
// below the arithmetic. One chain of FMAs per (m, n); the M * NB chains run side by side.
template <int M, int NB, int BITS>
__attribute__((always_inline)) inline void tile(const Problem& p, const Codes<BITS>& code, int n,
                                                float (*sb)[kMaxGroups], float* bb) {
  const int G = p.K / p.group_size, blocks = p.K / 32;
  const int group_shift = p.group_size == 32 ? 0 : p.group_size == 64 ? 1 : 2;  // block -> group, no division
  const size_t row_bytes = static_cast<size_t>(p.K) * BITS / 8;
  const size_t scale_stride = static_cast<size_t>(blocks) * kScaleLanes;
  for (int j = 0; j < NB; ++j) row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n + j) * G, G, sb[j]);
  __m512 acc[M][NB];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_setzero_ps();
  int b = 0;
  for (; b + 2 <= blocks; b += 2) {
    __m512i codes[NB];
    __m512 ws[NB];  // lanes 0-7: block b's weight scale, 8-15: block b+1's
    for (int j = 0; j < NB; ++j) {
      codes[j] = code.pair(p.w + (n + j) * row_bytes, b);
      ws[j] = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(sb[j][b >> group_shift])),
                                                  _mm256_castps_pd(_mm256_set1_ps(sb[j][(b + 1) >> group_shift])), 1));
    }
    for (int m = 0; m < M; ++m) {
      const __m512i xq = _mm512_loadu_si512(p.xq + static_cast<size_t>(m) * p.K + b * 32);
      const __m512 xs = _mm512_loadu_ps(p.xq_scale + m * scale_stride + static_cast<size_t>(b) * kScaleLanes);
      for (int j = 0; j < NB; ++j) {
        const __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes[j], xq);
        acc[m][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dots), xs), ws[j], acc[m][j]);
      }
    }
  }
  if (b < blocks) {  // an odd number of blocks: the last one on 256-bit lanes, into acc's low half
    __m256i codes[NB];
    __m512 ws[NB];
    for (int j = 0; j < NB; ++j) {
      codes[j] = code.block(p.w + (n + j) * row_bytes, b);
      ws[j] = _mm512_set1_ps(sb[j][b >> group_shift]);
    }
    for (int m = 0; m < M; ++m) {
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xq + static_cast<size_t>(m) * p.K + b * 32));
      const __m256 xs = _mm256_loadu_ps(p.xq_scale + m * scale_stride + static_cast<size_t>(b) * kScaleLanes);
      for (int j = 0; j < NB; ++j) {
        const __m256i dots = _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes[j], xq);
        const __m512 part = _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(dots), xs));
        acc[m][j] = _mm512_mask3_fmadd_ps(part, ws[j], acc[m][j], 0x00FF);
      }
    }
  }
  for (int j = 0; j < NB; ++j) {  // plus the biases' term, as the float kernel adds it
    row_to_floats(p.scale_type, p.biases, static_cast<size_t>(n + j) * G, G, bb);
    for (int m = 0; m < M; ++m) {
      p.out[static_cast<size_t>(m) * p.N + n + j] =
          _mm512_reduce_add_ps(acc[m][j]) + dot(bb, p.xsum + static_cast<size_t>(m) * G, G);
    }
  }
}

// Weight rows per tile for M activation rows: as many as the 32 vector registers hold (M * NB
// accumulators, NB unpacked weight vectors and their scales).
constexpr int tile_rows(int M) { return M == 1 ? 1 : M == 2 ? 2 : M <= 3 ? 4 : M == 4 ? 3 : 2; }

template <int M, int BITS>
void rows(const Problem& p, int n0, int n1) {
  constexpr int NB = tile_rows(M);
  float sb[NB][kMaxGroups], bb[kMaxGroups];
  const Codes<BITS> code;
  int n = n0;
  for (; n + NB <= n1; n += NB) tile<M, NB, BITS>(p, code, n, sb, bb);
  for (; n < n1; ++n) tile<M, 1, BITS>(p, code, n, sb, bb);  // the same arithmetic per (m, n)
}

template <int BITS>
void rows_bits(const Problem& p, int n0, int n1) {
  switch (p.M) {
    case 1: return rows<1, BITS>(p, n0, n1);
    case 2: return rows<2, BITS>(p, n0, n1);
    case 3: return rows<3, BITS>(p, n0, n1);
    case 4: return rows<4, BITS>(p, n0, n1);
    case 5: return rows<5, BITS>(p, n0, n1);
    case 6: return rows<6, BITS>(p, n0, n1);
    case 7: return rows<7, BITS>(p, n0, n1);
    default: return rows<8, BITS>(p, n0, n1);
  }
}

}  // namespace

void rows_avx512_vnni(const Problem& p, int n0, int n1) {
  if (p.xq == nullptr) return rows_avx512(p, n0, n1);
  switch (p.bits) {
    case 2: return rows_bits<2>(p, n0, n1);
    case 3: return rows_bits<3>(p, n0, n1);
    case 4: return rows_bits<4>(p, n0, n1);
    case 5: return rows_bits<5>(p, n0, n1);
    case 6: return rows_bits<6>(p, n0, n1);
    default: return rows_bits<8>(p, n0, n1);
  }
}

}  // namespace macllm_cpu
