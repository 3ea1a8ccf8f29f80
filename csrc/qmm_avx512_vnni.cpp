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
#include <algorithm>
#include <cstddef>

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
  const uint8_t* end;  // one past the matrix's codes
  explicit Codes(const Problem& problem)
      : end(problem.w + static_cast<size_t>(problem.N) * problem.K * BITS / 8) {
    alignas(64) uint8_t p[64], sh[64];
    for (int i = 0; i < 64; ++i) {
      const int lane = i / 8, j = i % 8;
      p[i] = static_cast<uint8_t>(j < BITS ? lane * BITS + j : 0);
      sh[i] = static_cast<uint8_t>(BITS * j);
    }
    perm = _mm512_load_si512(p);
    shifts = _mm512_load_si512(sh);
  }
  // 64 bytes from src, of which the first `bytes` are wanted. A plain load reads what follows too (unused);
  // only at the matrix's end a masked one, which stays inside it: on AMD's Zen 5, masked loads ran the
  // 5-bit matrices of Qwen2.5-Coder-0.5B at a third of the speed (a fault-suppressing load is slow when its
  // masked-off bytes cross into another page).
  __attribute__((always_inline)) __m512i load(const uint8_t* src, int bytes) const {
    if (end - src >= 64) return _mm512_loadu_si512(src);
    const int inside = static_cast<int>(std::min<ptrdiff_t>(bytes, end - src));
    return _mm512_maskz_loadu_epi8(_cvtu64_mask64(inside <= 0 ? 0 : (~0ULL) >> (64 - inside)), src);
  }
  __attribute__((always_inline)) __m512i packed(const uint8_t* src, int bytes) const {
    const __m512i raw = load(src, bytes);
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
      return load(wr + b * 32, 64);
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

// 4x4 transposes of 32-bit groups within each 128-bit lane of a, b, c, d: afterwards a holds every lane's
// first group of a, b, c, d (in that order), b the second, and so on.
__attribute__((always_inline)) inline void transpose4(__m512i& a, __m512i& b, __m512i& c, __m512i& d) {
  const __m512i t0 = _mm512_unpacklo_epi32(a, b), t1 = _mm512_unpackhi_epi32(a, b);
  const __m512i t2 = _mm512_unpacklo_epi32(c, d), t3 = _mm512_unpackhi_epi32(c, d);
  a = _mm512_unpacklo_epi64(t0, t2);
  b = _mm512_unpackhi_epi64(t0, t2);
  c = _mm512_unpacklo_epi64(t1, t3);
  d = _mm512_unpackhi_epi64(t1, t3);
}

// A chunk (kChunkValues = 16 blocks) of a row's codes as 8 vectors in which each 32-bit lane
// P holds 4 codes of one block, the same block in every vector: 8 vpdpbusd then leave each block's integer
// sum spread over the lanes of one accumulator (4 bits) or two (8 bits), and the conversion and scaling
// happen once per chunk instead of once per 64 values. Per activation row that is 11-14 instructions per
// 512 values instead of 32; the transposes are shared by all rows. The activations are stored in the
// matching order (chunk_int8_rows).
//   4 bits: load v (64 bytes) holds blocks 4v..4v+3, one per 128-bit lane; its low nibbles are each block's
//     even values, its high nibbles the odd ones (x's order). After the transposes, lane P = 4q + v holds
//     block 4v + q: vectors 0-3 its low nibbles' groups, 4-7 its high nibbles'.
//   8 bits: load v holds blocks 2v, 2v+1 (two 128-bit lanes each); loads 0-3 and 4-7 are transposed apart, so
//     vectors 0-3 hold blocks 0-7 (lane P: block 2 (P % 4) + P / 8) and vectors 4-7 blocks 8-15.
//   2, 3, 5 and 6 bits: each pair of blocks unpacked to bytes (Codes::pair) is laid out as an 8-bit load.
//   A padded chunk (the row's last, `valid` < 16 blocks): loads wholly past the row give zeros, partly past it
//   they read on (the activations there are zero); never past the matrix (Codes::load).
template <int BITS>
__attribute__((always_inline)) inline void chunk_codes(const Codes<BITS>& code, const uint8_t* wr, int c, int valid,
                                                       __m512i* v) {
  if constexpr (BITS == 4) {
    const uint8_t* src = wr + static_cast<size_t>(c) * kChunkValues / 2;
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int i = 0; i < 4; ++i) {
      const __m512i raw = 4 * i < valid ? code.load(src + 64 * i, 16 * std::min(4, valid - 4 * i)) : _mm512_setzero_si512();
      v[i] = _mm512_and_si512(raw, low4);
      v[4 + i] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
    }
  } else {
    for (int i = 0; i < 8; ++i) v[i] = 2 * i < valid ? code.pair(wr, c * 16 + 2 * i) : _mm512_setzero_si512();
  }
  transpose4(v[0], v[1], v[2], v[3]);
  transpose4(v[4], v[5], v[6], v[7]);
}

// The block each lane of a chunk's vectors holds (half 0: vectors 0-3, half 1: vectors 4-7), as an index
// into the chunk's 16 blocks; must agree with chunk_int8_rows.
template <int BITS>
__m512i chunk_blocks(int half) {
  alignas(64) int32_t idx[16];
  for (int P = 0; P < 16; ++P) idx[P] = BITS == 4 ? 4 * (P % 4) + P / 4 : 8 * half + 2 * (P % 4) + P / 8;
  return _mm512_load_si512(idx);
}

// The weight scales of a chunk's lanes from one row's group scales (sb, floats): group = block >> shift; 0
// for the blocks of a padded chunk past the row (`valid` blocks are the row's).
__attribute__((always_inline)) inline __m512 chunk_weight_scales(const float* sb, int c, int valid, int group_shift,
                                                                 __m512i blocks) {
  const float* base = sb + ((c * 16) >> group_shift);
  const __m512 groups = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (valid >> group_shift)) - 1), base);
  return _mm512_permutexvar_ps(_mm512_srli_epi32(blocks, group_shift), groups);
}

// How far ahead of the codes being read the kernel prefetches. A fixed distance, not a number of rows:
// four rows ahead (the first choice) ran Qwen2.5-Coder-0.5B's 560-byte rows ~20% slower than 2 KB on
// AMD's Zen 5, and no distance tried did better on the other models' rows (docs/kernels.md).
constexpr size_t kPrefetchBytes = 2048;

// A tile of NB weight rows (n..n+NB-1) against M activation rows: each activation load serves NB
// weight rows and each unpacked weight vector M activation rows, which keeps the loads from L1/L2
// below the arithmetic. One chain of FMAs per (m, n); the M * NB chains run side by side.
template <int M, int NB, int BITS>
__attribute__((always_inline)) inline void tile(const Problem& p, const Codes<BITS>& code, int n,
                                                float (*sb)[kMaxGroups], float* bb, RowSums<M>& sums) {
  const int G = p.K / p.group_size, blocks = p.K / 32;
  const int group_shift = p.group_size == 32 ? 0 : p.group_size == 64 ? 1 : 2;  // block -> group, no division
  const size_t row_bytes = static_cast<size_t>(p.K) * BITS / 8;
  const size_t scale_stride = static_cast<size_t>(blocks) * kScaleLanes;
  for (int j = 0; j < NB; ++j) row_to_floats(p.scale_type, p.scales, static_cast<size_t>(n + j) * G, G, sb[j]);
  __m512 acc[M][NB];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < NB; ++j) acc[m][j] = _mm512_setzero_ps();
  int b = 0;
  if (p.xq_chunks != nullptr) {
    const int chunks = int8_chunks(p.K);
    const __m512i blocks_lo = chunk_blocks<BITS>(0), blocks_hi = chunk_blocks<BITS>(1);
    for (int c = 0; c < chunks; ++c) {
      const int valid = int8_chunk_blocks(p.K, c);
      __m512i codes[NB][8];
      __m512 ws[NB][2];
      for (int j = 0; j < NB; ++j) {
        // The hardware prefetcher alone left two threads at ~20 GB/s on big matrices where llama.cpp reads
        // ~30. (A prefetch past the matrix's end is harmless: prefetches never fault.)
        const uint8_t* ahead = p.w + (n + j) * row_bytes + static_cast<size_t>(c) * kChunkValues * BITS / 8 + kPrefetchBytes;
        for (int l = 0; l < kChunkValues * BITS / 8; l += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + l), _MM_HINT_T0);
        chunk_codes<BITS>(code, p.w + (n + j) * row_bytes, c, valid, codes[j]);
        ws[j][0] = chunk_weight_scales(sb[j], c, valid, group_shift, blocks_lo);
        if constexpr (BITS != 4) ws[j][1] = chunk_weight_scales(sb[j], c, valid, group_shift, blocks_hi);
      }
      for (int m = 0; m < M; ++m) {
        const int8_t* xc = p.xq_chunks + (static_cast<size_t>(m) * chunks + c) * kChunkValues;
        const float* cs = p.xq_chunk_scale + (static_cast<size_t>(m) * chunks + c) * kChunkScales;
        for (int j = 0; j < NB; ++j) {
          // Two chains of 4 (integer sums: the order does not change the result).
          __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
          for (int i = 0; i < 4; ++i) {
            lo = _mm512_dpbusd_epi32(lo, codes[j][i], _mm512_loadu_si512(xc + 64 * i));
            hi = _mm512_dpbusd_epi32(hi, codes[j][4 + i], _mm512_loadu_si512(xc + 64 * (4 + i)));
          }
          if constexpr (BITS == 4) {  // the same blocks in both halves
            const __m512 sums = _mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi));
            acc[m][j] = _mm512_fmadd_ps(_mm512_mul_ps(sums, _mm512_loadu_ps(cs)), ws[j][0], acc[m][j]);
          } else {
            acc[m][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(lo), _mm512_loadu_ps(cs)), ws[j][0], acc[m][j]);
            acc[m][j] =
                _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(hi), _mm512_loadu_ps(cs + 16)), ws[j][1], acc[m][j]);
          }
        }
      }
    }
    b = std::min(chunks * 16, blocks);
  }
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
    for (int m = 0; m < M; ++m) sums.put(m, acc[m][j], dot_terms(bb, p.xsum + static_cast<size_t>(m) * G, G));
    sums.next(p, n + j);
  }
}

// Weight rows per tile for M activation rows: as many as the 32 vector registers hold (M * NB
// accumulators, NB unpacked weight vectors and their scales).
constexpr int tile_rows(int M) { return M == 1 ? 1 : M == 2 ? 2 : M <= 3 ? 4 : M == 4 ? 3 : 2; }
// With chunks: NB * 8 code vectors and M * NB accumulators.
constexpr int chunk_tile_rows(int M) { return M == 2 ? 2 : 1; }

template <int M, int NB, int BITS>
void tiles(const Problem& p, int n0, int n1) {
  float sb[NB][kMaxGroups], bb[kMaxGroups];
  const Codes<BITS> code(p);
  RowSums<M> sums;
  int n = n0;
  for (; n + NB <= n1; n += NB) tile<M, NB, BITS>(p, code, n, sb, bb, sums);
  for (; n < n1; ++n) tile<M, 1, BITS>(p, code, n, sb, bb, sums);  // the same arithmetic per (m, n)
  sums.flush(p);
}

template <int M, int BITS>
void rows(const Problem& p, int n0, int n1) {
  if (p.xq_chunks != nullptr) return tiles<M, chunk_tile_rows(M), BITS>(p, n0, n1);
  tiles<M, tile_rows(M), BITS>(p, n0, n1);
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
