// The transposed product cot @ dequantize(w), what the gradient of x @ dequantize(w)^T needs (QLoRA
// training with --keep-quantized): MLX's own CPU op for it runs ~0.5 Gweights/s. Weight tiles are
// dequantized (in the kernels' order) and multiplied by the BLAS's sgemm, or, without a fast BLAS, added
// row by row; the kernels' 4-bit column order is undone at the end.
#include "qmm_transposed.h"

#include <algorithm>
#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "qmm_dispatch.h"
#include "qmm_prepare.h"

namespace macllm_cpu {
namespace {

void check(bool ok, const std::string& what) { check_op(ok, "quantized_matmul_transposed", what); }

template <typename T>
void rows_to_floats(const mx::array& a, int width, float* dst) {
  const T* base = a.data<T>();
  const size_t rows = a.size() / width;
  const int64_t inner = a.strides().back();
  for (size_t r = 0; r < rows; ++r) {
    const int64_t offset = row_offset(a, r);
    for (int i = 0; i < width; ++i) dst[r * width + i] = static_cast<float>(base[offset + i * inner]);
  }
}

void compute(const mx::array& cot, const mx::array& w, const mx::array& scales, const mx::array& biases,
             mx::array& out, int group_size, int bits) {
  const int N = static_cast<int>(w.shape(0));
  const int K = static_cast<int>(w.shape(1)) * 32 / bits;
  const int M = static_cast<int>(cot.size() / N);
  if (M == 0 || K == 0) return;
  thread_local std::vector<float> c, result, tile;
  c.resize(static_cast<size_t>(M) * N);
  switch (cot.dtype()) {
    case mx::float32: rows_to_floats<float>(cot, N, c.data()); break;
    case mx::float16: rows_to_floats<mx::float16_t>(cot, N, c.data()); break;
    default: rows_to_floats<mx::bfloat16_t>(cot, N, c.data()); break;
  }
  result.assign(static_cast<size_t>(M) * K, 0.0f);  // in the kernels' column order until the end
  Problem p{};
  p.w = reinterpret_cast<const uint8_t*>(w.data<uint32_t>());
  p.scales = scales.data<void>();
  p.biases = biases.data<void>();
  p.scale_type = scale_type(scales.dtype());
  p.N = N;
  p.K = K;
  p.group_size = group_size;
  p.bits = bits;
  const int rows = sgemm_tile_rows(N, K);
  tile.resize(static_cast<size_t>(rows) * K);
  const DequantFn dequant = current_dequant();
  // set_prefill_rows(0) (tests) turns the BLAS off here too, to check the plain loop.
  const SgemmFn sgemm = get_prefill_rows() != 0 ? fast_sgemm() : nullptr;
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int count = std::min(rows, N - n0);
    dequant(p, n0, n0 + count, tile.data());
    if (sgemm != nullptr) {
      sgemm(kRowMajor, kNoTrans, kNoTrans, M, K, count, 1.0f, c.data() + n0, N, tile.data(), K, 1.0f,
            result.data(), K);
      continue;
    }
    for (int m = 0; m < M; ++m) {
      float* dst = result.data() + static_cast<size_t>(m) * K;
      for (int n = 0; n < count; ++n) {
        const float cn = c[static_cast<size_t>(m) * N + n0 + n];
        const float* src = tile.data() + static_cast<size_t>(n) * K;
        for (int k = 0; k < K; ++k) dst[k] += cn * src[k];
      }
    }
  }
  if (bits == 4) {  // each run of 32 columns is 16 even then 16 odd: back to 0, 1, 2, ...
    float run[32];
    for (size_t r = 0; r < static_cast<size_t>(M); ++r) {
      float* row = result.data() + r * K;
      for (int k0 = 0; k0 < K; k0 += 32) {
        for (int j = 0; j < 16; ++j) {
          run[2 * j] = row[k0 + j];
          run[2 * j + 1] = row[k0 + 16 + j];
        }
        std::copy(run, run + 32, row + k0);
      }
    }
  }
  const size_t total = static_cast<size_t>(M) * K;
  if (out.dtype() == mx::float32) {
    std::copy(result.begin(), result.begin() + total, out.data<float>());
  } else {
    store_floats(result.data(), total, out);
  }
}

}  // namespace

mx::array quantized_matmul_transposed(const mx::array& cot, const mx::array& w, const mx::array& scales,
                                      const mx::array& biases, int group_size, int bits, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check(cot.ndim() >= 1 && is_float(cot.dtype()), "the cotangent must be a float array");
  check(w.ndim() == 2, "w must be a 2-D uint32 array");
  const int N = static_cast<int>(w.shape(0)), K = bits > 0 ? static_cast<int>(w.shape(1)) * 32 / bits : 0;
  check_quantized("quantized_matmul_transposed", stream, w, scales, biases, group_size, bits, K);
  check(cot.shape(-1) == N, "the cotangent's last dimension must be w's rows");
  mx::Shape shape = cot.shape();
  shape.back() = K;
  return mx::array(shape, mx::promote_types(cot.dtype(), scales.dtype()),
                   std::make_shared<TransposedQuantizedMatmul>(stream, group_size, bits),
                   {cot, row_contiguous(w, stream), row_contiguous(scales, stream), row_contiguous(biases, stream)});
}

void TransposedQuantizedMatmul::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& encoder = mx::cpu::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch([cot = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                    scales = mx::array::unsafe_weak_copy(inputs[2]), biases = mx::array::unsafe_weak_copy(inputs[3]),
                    out = mx::array::unsafe_weak_copy(out), group_size = group_size_, bits = bits_]() mutable {
    compute(cot, w, scales, biases, out, group_size, bits);
  });
}

void TransposedQuantizedMatmul::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("[macllm quantized_matmul_transposed] has no GPU implementation");
}

// d(cot W)/d cot is (g W^T): the forward kernel again.
std::vector<mx::array> TransposedQuantizedMatmul::vjp(const std::vector<mx::array>& primals,
                                                      const std::vector<mx::array>& cotangents,
                                                      const std::vector<int>& argnums, const std::vector<mx::array>&) {
  check(argnums.size() == 1 && argnums[0] == 0, "differentiable in the cotangent only (the weights are frozen)");
  return {quantized_matmul(cotangents[0], primals[1], primals[2], primals[3], group_size_, bits_, stream())};
}

bool TransposedQuantizedMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TransposedQuantizedMatmul&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_;
}

}  // namespace macllm_cpu
