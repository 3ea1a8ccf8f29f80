// Portable row kernel: the semantics every SIMD variant must reproduce (up to summation order),
// and the path on CPUs without AVX2 or NEON.
#include <cmath>
#include <cstring>
#include <limits>

#include "qmm_kernels.h"

namespace macllm_cpu {

static float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {  // inf / nan
    bits = sign | 0x7f800000 | (mant << 13);
  } else if (exp != 0) {  // normal
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {  // zero
    bits = sign;
  } else {  // subnormal: renormalise
    exp = 113;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      exp--;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float scale_at(ScaleType t, const void* base, size_t i) {
  switch (t) {
    case ScaleType::F32:
      return static_cast<const float*>(base)[i];
    case ScaleType::F16:
      return half_bits_to_float(static_cast<const uint16_t*>(base)[i]);
    case ScaleType::BF16: {
      uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }
  }
  return 0.0f;
}

float packed_value(const uint8_t* row, size_t row_bytes, int k, int bits) {
  const size_t bit = static_cast<size_t>(k) * bits;
  const size_t byte = bit >> 3;
  uint32_t window = row[byte];
  if (byte + 1 < row_bytes) window |= static_cast<uint32_t>(row[byte + 1]) << 8;
  return static_cast<float>((window >> (bit & 7)) & ((1u << bits) - 1));
}

void rows_scalar(const Problem& p, int n0, int n1) {
  const int G = p.K / p.group_size;
  const size_t row_bytes = static_cast<size_t>(p.K) * p.bits / 8;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* wr = p.w + n * row_bytes;
    for (int m = 0; m < p.M; ++m) {
      const float* xm = p.x + static_cast<size_t>(m) * p.K;
      float total = 0.0f;
      for (int g = 0; g < G; ++g) {
        const size_t gi = static_cast<size_t>(n) * G + g;
        float dot = 0.0f;
        const int k_begin = g * p.group_size;
        if (p.bits == 4) {
          for (int k0 = k_begin; k0 < k_begin + p.group_size; k0 += 32) {
            for (int j = 0; j < 16; ++j) {
              const uint8_t byte = wr[k0 / 2 + j];
              dot += static_cast<float>(byte & 15) * xm[k0 + j] + static_cast<float>(byte >> 4) * xm[k0 + 16 + j];
            }
          }
        } else if (p.bits == 8) {
          for (int k = k_begin; k < k_begin + p.group_size; ++k) {
            dot += static_cast<float>(wr[k]) * xm[k];
          }
        } else {
          for (int k = k_begin; k < k_begin + p.group_size; ++k) dot += packed_value(wr, row_bytes, k, p.bits) * xm[k];
        }
        total += scale_at(p.scale_type, p.scales, gi) * dot +
            scale_at(p.scale_type, p.biases, gi) * p.xsum[static_cast<size_t>(m) * G + g];
      }
      p.out[static_cast<size_t>(m) * p.N + n] = total;
    }
  }
}

void dequant_scalar(const Problem& p, int n0, int n1, float* dst) {
  const int G = p.K / p.group_size;
  const size_t row_bytes = static_cast<size_t>(p.K) * p.bits / 8;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* wr = p.w + n * row_bytes;
    float* out = dst + static_cast<size_t>(n - n0) * p.K;
    for (int g = 0; g < G; ++g) {
      const size_t gi = static_cast<size_t>(n) * G + g;
      const float s = scale_at(p.scale_type, p.scales, gi), b = scale_at(p.scale_type, p.biases, gi);
      const int k_begin = g * p.group_size, k_end = k_begin + p.group_size;
      if (p.bits == 4) {
        for (int k0 = k_begin; k0 < k_end; k0 += 32) {
          for (int j = 0; j < 16; ++j) {
            const uint8_t byte = wr[k0 / 2 + j];
            out[k0 + j] = s * static_cast<float>(byte & 15) + b;
            out[k0 + 16 + j] = s * static_cast<float>(byte >> 4) + b;
          }
        }
      } else if (p.bits == 8) {
        for (int k = k_begin; k < k_end; ++k) out[k] = s * static_cast<float>(wr[k]) + b;
      } else {
        for (int k = k_begin; k < k_end; ++k) out[k] = s * packed_value(wr, row_bytes, k, p.bits) + b;
      }
    }
  }
}

void quantize_rows_int8(const float* x, int M, int K, int group_size, int8_t* xq, float* xq_scale, float* xq_sum) {
  const int blocks = K / 32, G = K / group_size;
  for (int m = 0; m < M; ++m) {
    for (int g = 0; g < G; ++g) xq_sum[static_cast<size_t>(m) * G + g] = 0.0f;
    for (int b = 0; b < blocks; ++b) {
      const float* src = x + static_cast<size_t>(m) * K + b * 32;
      int8_t* dst = xq + static_cast<size_t>(m) * K + b * 32;
      // Plain compares rather than fmax/isfinite: this loop runs over every row of every call, and
      // these vectorize. A NaN fails `a <= max`, an infinity `a <= max` as well.
      float absmax = 0.0f;
      bool finite = true;
      for (int i = 0; i < 32; ++i) {
        const float a = std::fabs(src[i]);
        absmax = a > absmax ? a : absmax;
        finite = finite & (a <= std::numeric_limits<float>::max());
      }
      float d = absmax / 127.0f;
      if (!finite) {
        d = std::numeric_limits<float>::quiet_NaN();
        for (int i = 0; i < 32; ++i) dst[i] = 0;
      } else {
        const float inv = absmax > 0.0f ? 127.0f / absmax : 0.0f;
        for (int i = 0; i < 32; ++i) {
          // Adding and subtracting 1.5 * 2^23 rounds half to even, like rint, without a libm call;
          // |x * inv| <= 127 plus rounding, so the trick is exact here and the result needs no clamp.
          const float r = (src[i] * inv + 12582912.0f) - 12582912.0f;
          dst[i] = static_cast<int8_t>(static_cast<int>(r));
        }
      }
      float* ds = xq_scale + (static_cast<size_t>(m) * blocks + b) * kScaleLanes;
      for (int i = 0; i < kScaleLanes; ++i) ds[i] = d;
      int32_t codes = 0;
      for (int i = 0; i < 32; ++i) codes += dst[i];
      xq_sum[static_cast<size_t>(m) * G + b * 32 / group_size] += d * static_cast<float>(codes);
    }
  }
}

namespace {

// Where the kernel's chunk layout takes each 4-byte group from: output group o = 16 * i + P (vector i, lane P)
// holds group src of the chunk's xq (8 groups per block of 32). See qmm_avx512_vnni.cpp for the transposes.
int chunk_source(int bits, int o) {
  const int i = o / 16, P = o % 16;
  if (bits == 4) return (4 * (P % 4) + P / 4) * 8 + i;  // block 4 (P % 4) + P / 4, its i-th group
  // Other widths (laid out as 8 bits): vectors 0-3 blocks 0-7, vectors 4-7 blocks 8-15.
  const int block = 8 * (i / 4) + 2 * (P % 4) + P / 8;
  return block * 8 + 4 * ((P / 4) % 2) + i % 4;
}

// The block whose scale lane P of the chunk's scale vectors holds (vector P / 16).
int chunk_scale_block(int bits, int lane) {
  const int P = lane % 16;
  if (bits == 4) return 4 * (P % 4) + P / 4;  // the second vector is unused (a copy)
  return 8 * (lane / 16) + 2 * (P % 4) + P / 8;
}

}  // namespace

void chunk_int8_rows(const int8_t* xq, const float* xq_scale, int M, int K, int bits, int8_t* chunks,
                     float* chunk_scale) {
  const int per_row = int8_chunks(K), blocks = K / 32;
  int source[kChunkValues / 4], scale_block[kChunkScales];
  for (int o = 0; o < kChunkValues / 4; ++o) source[o] = chunk_source(bits, o);
  for (int l = 0; l < kChunkScales; ++l) scale_block[l] = chunk_scale_block(bits, l);
  for (int m = 0; m < M; ++m) {
    for (int c = 0; c < per_row; ++c) {
      const int valid = int8_chunk_blocks(K, c);
      const int8_t* src = xq + static_cast<size_t>(m) * K + static_cast<size_t>(c) * kChunkValues;
      int8_t* dst = chunks + (static_cast<size_t>(m) * per_row + c) * kChunkValues;
      for (int o = 0; o < kChunkValues / 4; ++o) {
        if (source[o] / 8 < valid) {
          std::memcpy(dst + 4 * o, src + 4 * source[o], 4);
        } else {
          std::memset(dst + 4 * o, 0, 4);
        }
      }
      float* ds = chunk_scale + (static_cast<size_t>(m) * per_row + c) * kChunkScales;
      for (int l = 0; l < kChunkScales; ++l) {
        ds[l] = scale_block[l] < valid ? xq_scale[(static_cast<size_t>(m) * blocks + c * 16 + scale_block[l]) * kScaleLanes]
                                       : 0.0f;
      }
    }
  }
}

void rows_int8_scalar(const Problem& p, int n0, int n1) {
  const int G = p.K / p.group_size, blocks = p.K / 32;
  const size_t row_bytes = static_cast<size_t>(p.K) * p.bits / 8;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* wr = p.w + n * row_bytes;
    for (int m = 0; m < p.M; ++m) {
      const int8_t* xm = p.xq + static_cast<size_t>(m) * p.K;
      float total = 0.0f;
      for (int b = 0; b < blocks; ++b) {
        int32_t dot = 0;
        if (p.bits == 4) {  // x's block holds the 16 even then the 16 odd values (the nibbles' order)
          for (int j = 0; j < 16; ++j) {
            const uint8_t byte = wr[b * 16 + j];
            dot += (byte & 15) * xm[b * 32 + j] + (byte >> 4) * xm[b * 32 + 16 + j];
          }
        } else if (p.bits == 8) {
          for (int k = b * 32; k < b * 32 + 32; ++k) dot += wr[k] * xm[k];
        } else {
          for (int k = b * 32; k < b * 32 + 32; ++k) {
            dot += static_cast<int32_t>(packed_value(wr, row_bytes, k, p.bits)) * xm[k];
          }
        }
        const float d = p.xq_scale[(static_cast<size_t>(m) * blocks + b) * kScaleLanes];
        total += scale_at(p.scale_type, p.scales, static_cast<size_t>(n) * G + b * 32 / p.group_size) *
                 (static_cast<float>(dot) * d);
      }
      for (int g = 0; g < G; ++g) {
        total += scale_at(p.scale_type, p.biases, static_cast<size_t>(n) * G + g) * p.xsum[static_cast<size_t>(m) * G + g];
      }
      p.out[static_cast<size_t>(m) * p.N + n] = total;
    }
  }
}

}  // namespace macllm_cpu
