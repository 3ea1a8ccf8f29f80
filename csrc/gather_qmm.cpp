#include "gather_qmm.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/utils.h"
#include "qmm_dispatch.h"
#include "qmm_prepare.h"
#include "thread_pool.h"

namespace macllm_cpu {
namespace {

void check(bool ok, const std::string& what) { check_op(ok, "gather_quantized_matmul", what); }

// Element i (row-major over its shape) of an integer array, read where it lies.
int64_t index_at(const mx::array& a, size_t i) {
  int64_t offset = 0;
  for (int d = static_cast<int>(a.ndim()) - 1; d >= 0; --d) {
    offset += static_cast<int64_t>(i % a.shape(d)) * a.strides()[d];
    i /= a.shape(d);
  }
  switch (a.dtype()) {
    case mx::uint32: return a.data<uint32_t>()[offset];
    case mx::int32: return a.data<int32_t>()[offset];
    case mx::uint64: return static_cast<int64_t>(a.data<uint64_t>()[offset]);
    case mx::int64: return a.data<int64_t>()[offset];
    case mx::uint16: return a.data<uint16_t>()[offset];
    case mx::int16: return a.data<int16_t>()[offset];
    case mx::uint8: return a.data<uint8_t>()[offset];
    default: return a.data<int8_t>()[offset];
  }
}

// Consecutive rows of prepared x (and of the output) that go through one expert.
struct Segment {
  int64_t expert;
  int first_row;
  int rows;
};

struct GatherJob {
  Problem base;  // all rows' x, xsum and out; expert 0's w, scales, biases
  RowsFn rows_fn;
  std::vector<Segment> segments;
  std::vector<std::pair<int, int>> tasks;  // (segment, chunk of output columns)
  int rows_per_task = 0;
  size_t expert_w_bytes = 0, expert_scale_bytes = 0;
};

void run_gather_task(void* ctx, int task) {
  const GatherJob& j = *static_cast<const GatherJob*>(ctx);
  const Segment& seg = j.segments[j.tasks[task].first];
  const int K = j.base.K, N = j.base.N, G = K / j.base.group_size;
  const int n0 = j.tasks[task].second * j.rows_per_task;
  const int n1 = std::min(N, n0 + j.rows_per_task);
  for (int m0 = 0; m0 < seg.rows; m0 += kMaxRows) {
    Problem p = j.base;
    const size_t row = static_cast<size_t>(seg.first_row + m0);
    p.M = std::min(kMaxRows, seg.rows - m0);
    p.x = j.base.x + row * K;
    p.xsum = j.base.xsum + row * G;
    p.out = j.base.out + row * N;
    p.w = j.base.w + seg.expert * j.expert_w_bytes;
    p.scales = static_cast<const char*>(j.base.scales) + seg.expert * j.expert_scale_bytes;
    p.biases = static_cast<const char*>(j.base.biases) + seg.expert * j.expert_scale_bytes;
    j.rows_fn(p, n0, n1);
  }
}

void compute(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
             const mx::array& indices, mx::array& out, int group_size, int bits) {
  const int K = static_cast<int>(x.shape(-1)), M = static_cast<int>(x.shape(-2));
  const int E = static_cast<int>(w.shape(0)), N = static_cast<int>(w.shape(1)), G = K / group_size;
  const size_t batch = indices.size();
  if (batch == 0 || M == 0 || N == 0) return;
  thread_local std::vector<float> xp, xsum, result;
  xp.resize(batch * M * K);
  xsum.resize(batch * M * G);
  prepare_x(x, K, bits, group_size, xp.data(), xsum.data());
  float* out_f = out.data<float>();
  if (out.dtype() != mx::float32) {
    result.resize(batch * M * N);
    out_f = result.data();
  }
  GatherJob job;
  job.base = Problem{xp.data(), xsum.data(), reinterpret_cast<const uint8_t*>(w.data<uint32_t>()),
                     scales.data<void>(), biases.data<void>(), scale_type(scales.dtype()), out_f, M, N, K,
                     group_size, bits};
  job.rows_fn = current_rows();
  job.expert_w_bytes = static_cast<size_t>(N) * K * bits / 8;
  job.expert_scale_bytes = static_cast<size_t>(N) * G * scales.itemsize();
  for (size_t b = 0; b < batch; ++b) {
    const int64_t e = index_at(indices, b);
    if (e < 0 || e >= E) {  // never a silent wrong answer: an impossible expert's rows come out NaN
      std::fill(out_f + b * M * N, out_f + (b + 1) * M * N, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    if (!job.segments.empty() && job.segments.back().expert == e &&
        job.segments.back().first_row + job.segments.back().rows == static_cast<int>(b) * M) {
      job.segments.back().rows += M;
    } else {
      job.segments.push_back({e, static_cast<int>(b) * M, M});
    }
  }
  ThreadPool& pool = ThreadPool::instance();
  // About 8 tasks per thread over all segments together.
  const size_t total = job.segments.size() * static_cast<size_t>(N);
  job.rows_per_task = std::max<int>(4, static_cast<int>((total + pool.threads() * 8 - 1) / (pool.threads() * 8)));
  job.rows_per_task = std::min(job.rows_per_task, N);
  const int chunks = (N + job.rows_per_task - 1) / job.rows_per_task;
  for (size_t si = 0; si < job.segments.size(); ++si) {
    for (int c = 0; c < chunks; ++c) job.tasks.emplace_back(static_cast<int>(si), c);
  }
  pool.parallel_for(static_cast<int>(job.tasks.size()), run_gather_task, &job);
  if (out.dtype() != mx::float32) store_floats(result.data(), result.size(), out);
}

}  // namespace

mx::array gather_quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                                  const mx::array& biases, const mx::array& indices, int group_size, int bits,
                                  mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check(x.ndim() >= 2 && is_float(x.dtype()), "x must be a float array (..., rows, K)");
  check(w.ndim() == 3, "w must be a 3-D uint32 array (experts, N, packed K)");
  check(mx::issubdtype(indices.dtype(), mx::integer), "indices must be integers");
  const int K = bits > 0 ? static_cast<int>(w.shape(2)) * 32 / bits : 0;
  check_quantized("gather_quantized_matmul", stream, w, scales, biases, group_size, bits, K);
  check(x.shape(-1) == K, "x's last dimension must match w's");
  const mx::Shape x_batch(x.shape().begin(), x.shape().end() - 2);
  const mx::Shape batch = mx::broadcast_shapes(x_batch, indices.shape());
  mx::Shape x_shape = batch, out_shape = batch;
  x_shape.insert(x_shape.end(), {x.shape(-2), x.shape(-1)});
  out_shape.insert(out_shape.end(), {x.shape(-2), w.shape(1)});
  return mx::array(out_shape, mx::promote_types(x.dtype(), scales.dtype()),
                   std::make_shared<GatherQuantizedMatmul>(stream, group_size, bits),
                   {mx::broadcast_to(x, x_shape, stream), row_contiguous(w, stream), row_contiguous(scales, stream),
                    row_contiguous(biases, stream), mx::broadcast_to(indices, batch, stream)});
}

void GatherQuantizedMatmul::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& encoder = mx::cpu::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                    scales = mx::array::unsafe_weak_copy(inputs[2]), biases = mx::array::unsafe_weak_copy(inputs[3]),
                    indices = mx::array::unsafe_weak_copy(inputs[4]), out = mx::array::unsafe_weak_copy(out),
                    group_size = group_size_, bits = bits_]() mutable {
    compute(x, w, scales, biases, indices, out, group_size, bits);
  });
}

void GatherQuantizedMatmul::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("[macllm gather_quantized_matmul] has no GPU implementation (use mx.gather_qmm)");
}

// Only x is differentiable (the experts' quantized weights are frozen): MLX's gather_qmm gives the
// gradient, its own vjp reading the transposed product.
std::vector<mx::array> GatherQuantizedMatmul::vjp(const std::vector<mx::array>& primals,
                                                  const std::vector<mx::array>& cotangents,
                                                  const std::vector<int>& argnums, const std::vector<mx::array>&) {
  check(argnums.size() == 1 && argnums[0] == 0, "differentiable in x only (the weights are frozen)");
  const mx::Stream s = stream();
  const mx::Dtype dt = primals[0].dtype();
  const mx::array scales = mx::astype(primals[2], dt, s), biases = mx::astype(primals[3], dt, s);
  auto fn = [&](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{mx::gather_qmm(in[0], primals[1], scales, biases, std::nullopt, primals[4], true,
                                                 group_size_, bits_, "affine", std::nullopt, false, s)};
  };
  return mx::vjp(fn, {primals[0]}, cotangents).second;
}

bool GatherQuantizedMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const GatherQuantizedMatmul&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_;
}

}  // namespace macllm_cpu
