#include "qmm_primitive.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <sstream>
#include <stdexcept>

#include "lora_delta.h"
#include "mlx/backend/cpu/encoder.h"
#include "qmm_dispatch.h"
#include "qmm_prepare.h"
#include "qmm_rows.h"
#include "qmm_transposed.h"
#include "thread_pool.h"

namespace macllm_cpu {
namespace {

void check(bool ok, const std::string& what) { check_op(ok, "quantized_matmul", what); }

struct Job {
  Problem base;  // M = all rows
  RowsFn rows;
  int rows_per_task;
  // A LoRA delta, added per run of columns by the task that computed them: scale * xa @ b, with
  // xa = x @ a (M x r) computed before the rows (a few microseconds with SIMD; as a task of the pool's job it
  // measured slower under load: the runs of columns then wait on whichever thread took it).
  const float* lora_xa = nullptr;
  const mx::array* lora_b = nullptr;
  float lora_scale = 0.0f;
};

// out[:, n0:n1] += scale * xa @ b[:, n0:n1], in float32.
void add_lora(const Job& job, int n0, int n1) {
  const Problem& p = job.base;
  lora_columns(job.lora_xa, *job.lora_b, p.M, p.N, n0, n1, job.lora_scale, p.out);
}

// One task: a run of output columns for every row of x, in blocks of kMaxRows rows so the weights
// of the run stay in cache while the blocks pass over them.
void run_task(const Job& job, int task) {
  const int n0 = task * job.rows_per_task;
  const int n1 = std::min(job.base.N, n0 + job.rows_per_task);
  if (job.lora_b != nullptr) prefetch_columns(*job.lora_b, n0, n1);  // arrives while the rows compute
  for (int m0 = 0; m0 < job.base.M; m0 += kMaxRows) {
    Problem p = job.base.from_row(m0);
    p.M = std::min(kMaxRows, job.base.M - m0);
    job.rows(p, n0, n1);
  }
  if (job.lora_b != nullptr) add_lora(job, n0, n1);
}

// Prefill: from this many rows of x, weight tiles are dequantized to float32 and multiplied by the
// BLAS's sgemm (MLX's OpenBLAS on Linux, Accelerate on macOS), ~2x faster than the float row kernels at
// 256 rows (docs/kernels.md). -1, the default, picks by the activations: 32 rows on float ones, 160 on
// int8 ones, whose row kernels beat the tiles below ~128-256 rows (1.4-2.7x at 48 rows, about even at 256).
// 0 turns the tiles off (set_prefill_rows, for tests and measurements).
std::atomic<int> prefill_rows{-1};
constexpr int kFloatPrefillRows = 32, kInt8PrefillRows = 160;

// out = x @ dequantize(w)^T through tiles of dequantized rows and sgemm (x in the kernels' order, and
// the tiles in the same order, so the product is unchanged).
void prefill_sgemm(SgemmFn sgemm, const Problem& p) {
  thread_local std::vector<float> tile;
  const int rows = sgemm_tile_rows(p.N, p.K);
  tile.resize(static_cast<size_t>(rows) * p.K);
  const DequantFn dequant = current_dequant();
  for (int n0 = 0; n0 < p.N; n0 += rows) {
    const int count = std::min(rows, p.N - n0);
    dequant(p, n0, n0 + count, tile.data());
    sgemm(kRowMajor, kNoTrans, kTrans, p.M, count, p.K, 1.0f, p.x, p.K, tile.data(), p.K, 0.0f, p.out + n0, p.N);
  }
}

void run_jobs(Job* jobs, int count);

// What a job's rows read besides x: the adapter's x @ a and the int8 activations (caller-owned).
struct JobBuffers {
  std::vector<float> xa, xq_scale;
  std::vector<int8_t> xq;
};

// Whether M rows go through dequantized tiles and sgemm (prefill) rather than the row kernels.
bool prefill_sized(int M) {
  const int set = prefill_rows.load();
  const int from = set >= 0 ? set : int8_enabled() ? kInt8PrefillRows : kFloatPrefillRows;
  return fast_sgemm() != nullptr && from > 0 && M >= from;
}

// The job for out_f (M x N floats) = the prepared rows times dequantize(w)^T, plus the LoRA delta when q.a
// is given (its x @ a computed here, into the caller's buffers). For the row kernels, int8 activations are
// prepared too where they are switched on, or taken from `int8_of` (a job on the same prepared rows).
Job make_job(const float* xp, const float* xsum, int M, int K, const QuantOperands& q, float* out_f,
             JobBuffers& buffers, const Problem* int8_of = nullptr) {
  Job job;
  job.base = Problem{xp, xsum, reinterpret_cast<const uint8_t*>(q.w->data<uint32_t>()), q.scales->data<void>(),
                     q.biases->data<void>(), scale_type(q.scales->dtype()), out_f, M, static_cast<int>(q.w->shape(0)),
                     K, q.group_size, q.bits};
  job.rows = current_rows();
  if (q.a != nullptr) {  // the adapter's delta rides on the same tasks as the rows it adds to
    buffers.xa.resize(static_cast<size_t>(M) * q.a->shape(1));
    lora_input(xp, *q.a, M, K, q.bits, buffers.xa.data());
    job.lora_xa = buffers.xa.data();
    job.lora_b = q.b;
    job.lora_scale = q.lora_scale;
  }
  if (prefill_sized(M)) return job;
  if (const RowsFn int8_rows = current_int8_rows(q.bits)) {  // decode's rows on int8 activations
    if (int8_of != nullptr && int8_of->xq != nullptr) {
      job.base.xq = int8_of->xq;
      job.base.xq_scale = int8_of->xq_scale;
      job.base.xsum = int8_of->xsum;  // the quantized rows' group sums
      job.base.xq_chunks = int8_of->xq_chunks;
      job.base.xq_chunk_scale = int8_of->xq_chunk_scale;
    } else {
      prepare_int8(job.base, buffers.xq, buffers.xq_scale);
    }
    job.rows = int8_rows;
  }
  return job;
}

// out_f (M x N floats) = the prepared rows times dequantize(w)^T, plus the LoRA delta when q.a is given:
// prefill through sgemm, decode on the row kernels.
void multiply_prepared(const float* xp, const float* xsum, int M, int K, const QuantOperands& q, float* out_f) {
  thread_local JobBuffers buffers;
  Job job = make_job(xp, xsum, M, K, q, out_f, buffers);
  if (prefill_sized(M)) {
    prefill_sgemm(fast_sgemm(), job.base);
    if (job.lora_b != nullptr) add_lora(job, 0, job.base.N);
    return;
  }
  run_jobs(&job, 1);
}

void compute(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
             const mx::array* a, const mx::array* b, float lora_scale, mx::array& out, int group_size, int bits) {
  const int K = static_cast<int>(x.shape(-1));
  const int N = static_cast<int>(w.shape(0));
  const int M = static_cast<int>(x.size() / K);
  const int G = K / group_size;
  if (M == 0 || N == 0) return;
  // The stream's worker thread calls this for every matmul: keep its buffers between calls.
  thread_local std::vector<float> xp, xsum, result;
  xp.resize(static_cast<size_t>(M) * K);
  xsum.resize(static_cast<size_t>(M) * G);
  prepare_x(x, K, bits, group_size, xp.data(), xsum.data());
  float* out_f = nullptr;
  if (out.dtype() == mx::float32) {
    out_f = out.data<float>();
  } else {
    result.resize(static_cast<size_t>(M) * N);
    out_f = result.data();
  }
  QuantOperands q{&w, &scales, &biases, a, b, lora_scale, group_size, bits};
  multiply_prepared(xp.data(), xsum.data(), M, K, q, out_f);
  if (out.dtype() != mx::float32) store_floats(result.data(), result.size(), out);
}

int tasks_for(Job& job) {
  const int threads = ThreadPool::instance().threads();
  // Tasks of ~256 KB of codes, between 2 and 8 per thread. Big matrices want many tasks, so that a busy
  // core's share moves to an idle one (Qwen2.5-Coder-1.5B: 2 per thread ~10% slower than 8); small ones
  // few, since each task starts a new stream that the prefetchers first have to find (SmolLM2's: 8 per
  // thread ~10% slower than 2).
  constexpr size_t kTaskBytes = 256 * 1024;
  const size_t bytes = static_cast<size_t>(job.base.N) * job.base.K * job.base.bits / 8;
  const int wanted = std::clamp(static_cast<int>(bytes / kTaskBytes), 2 * threads, 8 * threads);
  job.rows_per_task = std::max(4, (job.base.N + wanted - 1) / wanted);
  return (job.base.N + job.rows_per_task - 1) / job.rows_per_task;
}

// Jobs' tasks in one pass of the pool: task t belongs to the job whose range holds it.
struct Jobs {
  const Job* jobs = nullptr;
  std::vector<int> first;  // each job's first task, and the total at the end
};

void run_any_task(void* ctx, int task) {
  const Jobs& all = *static_cast<const Jobs*>(ctx);
  size_t j = 0;
  while (task >= all.first[j + 1]) ++j;
  run_task(all.jobs[j], task - all.first[j]);
}

void run_jobs(Job* jobs, int count) {
  thread_local Jobs all;  // the stream's worker thread runs every product: keep the list's memory
  all.jobs = jobs;
  all.first.assign(1, 0);
  for (int i = 0; i < count; ++i) all.first.push_back(all.first.back() + tasks_for(jobs[i]));
  ThreadPool::instance().parallel_for(all.first.back(), run_any_task, &all);
}

}  // namespace

void quantized_rows(const float* x, int M, const QuantOperands& q, float* out) {
  float* outs[1] = {out};
  quantized_rows_many(x, M, &q, outs, 1);
}

void quantized_rows_many(const float* x, int M, const QuantOperands* ops, float* const* outs, int count) {
  if (M == 0 || count == 0) return;
  // Each product's x prepared for its packing (the products of one input usually share one).
  thread_local std::vector<std::vector<float>> xp, xsum;
  thread_local std::vector<JobBuffers> buffers;
  thread_local std::vector<Job> jobs;
  // Grown, never shrunk: a layer's products alternate between 3, 1, 2 and 1 of them, and shrinking would
  // free and allocate the buffers of the ones past the first every time.
  if (xp.size() < static_cast<size_t>(count)) {
    xp.resize(count);
    xsum.resize(count);
    buffers.resize(count);
  }
  jobs.clear();
  for (int i = 0; i < count; ++i) {
    const QuantOperands& q = ops[i];
    const int K = static_cast<int>(q.w->shape(1)) * 32 / q.bits, G = K / q.group_size;
    int same = -1;
    for (int j = 0; j < i && same < 0; ++j) {
      if (ops[j].bits == q.bits && ops[j].group_size == q.group_size) same = j;
    }
    const int src = same < 0 ? i : same;
    if (same < 0) {
      xp[i].resize(static_cast<size_t>(M) * K);
      xsum[i].resize(static_cast<size_t>(M) * G);
      for (int r = 0; r < M; ++r) {
        prepare_row(x + static_cast<size_t>(r) * K, 1, K, q.bits, q.group_size,
                    xp[i].data() + static_cast<size_t>(r) * K, xsum[i].data() + static_cast<size_t>(r) * G);
      }
    }
    if (prefill_sized(M)) {  // one at a time, each through sgemm
      multiply_prepared(xp[src].data(), xsum[src].data(), M, K, q, outs[i]);
      continue;
    }
    // Products on the same prepared rows (q, k and v; gate and up) share one int8 quantization of them.
    // Every product of a call has the same M, so none went through sgemm above and jobs[j] is product j's.
    const Problem* int8_of = same >= 0 ? &jobs[same].base : nullptr;
    jobs.push_back(make_job(xp[src].data(), xsum[src].data(), M, K, q, outs[i], buffers[i], int8_of));
  }
  if (!jobs.empty()) run_jobs(jobs.data(), static_cast<int>(jobs.size()));
}

// The process's cblas_sgemm if it is a fast one: Accelerate on macOS; on Linux only OpenBLAS (which
// macllm loads before MLX), never the reference BLAS MLX's wheel links otherwise.
SgemmFn fast_sgemm() {
  static const SgemmFn fn = []() -> SgemmFn {
#if !defined(__APPLE__)
    if (dlsym(RTLD_DEFAULT, "openblas_get_num_threads") == nullptr) return nullptr;
#endif
    return reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  }();
  return fn;
}


void set_prefill_rows(int rows) { prefill_rows.store(rows < 0 ? -1 : rows); }
int get_prefill_rows() { return prefill_rows.load(); }
bool prefill_uses_sgemm() { return fast_sgemm() != nullptr; }

mx::array quantized_matmul_lora(const mx::array& x, const mx::array& w, const mx::array& scales,
                                const mx::array& biases, const mx::array& a, const mx::array& b, float scale,
                                int group_size, int bits, mx::StreamOrDevice s) {
  const mx::array base = quantized_matmul(x, w, scales, biases, group_size, bits, s);  // checks the rest
  const mx::Stream stream = mx::to_stream(s);
  const int K = static_cast<int>(x.shape(-1)), N = static_cast<int>(w.shape(0));
  check(a.ndim() == 2 && b.ndim() == 2 && a.shape(0) == K && b.shape(1) == N && a.shape(1) == b.shape(0) &&
            is_float(a.dtype()) && is_float(b.dtype()),
        "a must be float (K, r) and b float (r, N)");
  const auto& inputs = base.inputs();
  return mx::array(base.shape(), base.dtype(), std::make_shared<QuantizedMatmul>(stream, group_size, bits, true, scale),
                   {inputs[0], inputs[1], inputs[2], inputs[3], row_contiguous(a, stream), row_contiguous(b, stream)});
}

mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group_size, int bits, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check(w.ndim() == 2, "w must be a 2-D uint32 array");
  check(x.ndim() >= 1 && is_float(x.dtype()), "x must be a float array");
  const int K = bits > 0 ? static_cast<int>(w.shape(1)) * 32 / bits : 0;
  const int N = static_cast<int>(w.shape(0));
  check_quantized("quantized_matmul", stream, w, scales, biases, group_size, bits, K);
  std::ostringstream shapes;
  shapes << "x has " << x.shape(-1) << " columns, w holds " << K;
  check(x.shape(-1) == K, shapes.str());
  mx::Shape out_shape = x.shape();
  out_shape.back() = N;
  return mx::array(out_shape, mx::promote_types(x.dtype(), scales.dtype()),
                   std::make_shared<QuantizedMatmul>(stream, group_size, bits),
                   {x, row_contiguous(w, stream), row_contiguous(scales, stream), row_contiguous(biases, stream)});
}

void QuantizedMatmul::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  auto& encoder = mx::cpu::get_command_encoder(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  if (lora_) {
    encoder.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                      scales = mx::array::unsafe_weak_copy(inputs[2]), biases = mx::array::unsafe_weak_copy(inputs[3]),
                      a = mx::array::unsafe_weak_copy(inputs[4]), b = mx::array::unsafe_weak_copy(inputs[5]),
                      out = mx::array::unsafe_weak_copy(out), group_size = group_size_, bits = bits_,
                      scale = lora_scale_]() mutable {
      compute(x, w, scales, biases, &a, &b, scale, out, group_size, bits);
    });
    return;
  }
  encoder.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                    scales = mx::array::unsafe_weak_copy(inputs[2]), biases = mx::array::unsafe_weak_copy(inputs[3]),
                    out = mx::array::unsafe_weak_copy(out), group_size = group_size_, bits = bits_]() mutable {
    compute(x, w, scales, biases, nullptr, nullptr, 0.0f, out, group_size, bits);
  });
}

void QuantizedMatmul::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error("[macllm quantized_matmul] has no GPU implementation (use mx.quantized_matmul)");
}

std::vector<mx::array> QuantizedMatmul::jvp(const std::vector<mx::array>& primals,
                                            const std::vector<mx::array>& tangents, const std::vector<int>& argnums) {
  check(argnums.size() == 1 && argnums[0] == 0, "differentiable in x only (the weights are frozen)");
  if (lora_) {
    return {quantized_matmul_lora(tangents[0], primals[1], primals[2], primals[3], primals[4], primals[5], lora_scale_,
                                  group_size_, bits_, stream())};
  }
  return {quantized_matmul(tangents[0], primals[1], primals[2], primals[3], group_size_, bits_, stream())};
}

// d(x W^T)/dx is cotangent @ W: our transposed product (qmm_transposed.cpp). With a LoRA delta, x, a and b also get
// the delta's gradients (QLoRA training differentiates a and b).
std::vector<mx::array> QuantizedMatmul::vjp(const std::vector<mx::array>& primals,
                                            const std::vector<mx::array>& cotangents,
                                            const std::vector<int>& argnums, const std::vector<mx::array>&) {
  const mx::Stream s = stream();
  const mx::array& cot = cotangents[0];
  const mx::Dtype dt = cot.dtype();
  auto rows = [&](const mx::array& t) { return mx::reshape(mx::astype(t, dt, s), {-1, t.shape(-1)}, s); };
  const mx::array scale(lora_scale_, dt);
  std::vector<mx::array> grads;
  for (int arg : argnums) {
    if (arg == 0) {
      mx::array g = quantized_matmul_transposed(cot, primals[1], primals[2], primals[3], group_size_, bits_, s);
      if (lora_) {  // + scale * cot @ b^T @ a^T
        const mx::array cb = mx::matmul(cot, mx::transpose(mx::astype(primals[5], dt, s), s), s);
        g = mx::add(g, mx::multiply(scale, mx::matmul(cb, mx::transpose(mx::astype(primals[4], dt, s), s), s), s), s);
      }
      grads.push_back(mx::astype(g, primals[0].dtype(), s));
    } else if (lora_ && arg == 4) {  // scale * x^T @ (cot @ b^T)
      const mx::array cb = mx::matmul(rows(cot), mx::transpose(mx::astype(primals[5], dt, s), s), s);
      const mx::array g = mx::multiply(scale, mx::matmul(mx::transpose(rows(primals[0]), s), cb, s), s);
      grads.push_back(mx::astype(g, primals[4].dtype(), s));
    } else if (lora_ && arg == 5) {  // scale * (x @ a)^T @ cot
      const mx::array xa = mx::matmul(rows(primals[0]), mx::astype(primals[4], dt, s), s);
      const mx::array g = mx::multiply(scale, mx::matmul(mx::transpose(xa, s), rows(cot), s), s);
      grads.push_back(mx::astype(g, primals[5].dtype(), s));
    } else {
      check(false, "not differentiable in the quantized weights (they are frozen)");
    }
  }
  return grads;
}

std::pair<std::vector<mx::array>, std::vector<int>> QuantizedMatmul::vmap(const std::vector<mx::array>&,
                                                                          const std::vector<int>&) {
  throw std::runtime_error("[macllm quantized_matmul] has no vmap");
}

std::vector<mx::Shape> QuantizedMatmul::output_shapes(const std::vector<mx::array>& inputs) {
  mx::Shape shape = inputs[0].shape();
  shape.back() = inputs[1].shape(0);
  return {shape};
}

bool QuantizedMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const QuantizedMatmul&>(other);
  return group_size_ == o.group_size_ && bits_ == o.bits_ && lora_ == o.lora_ && lora_scale_ == o.lora_scale_;
}

}  // namespace macllm_cpu
