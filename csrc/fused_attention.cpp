// Attention for a few query rows over the KV cache: scores, softmax and the weighted sum, reading the
// cache's buffers where they lie, split over the kernel thread pool by kv head and run of keys.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu_features.h"
#include "fused_attend.h"
#include "fused_common.h"
#include "fused_ops.h"
#include "fused_rows.h"
#include "thread_pool.h"

namespace macllm_cpu {
namespace {

// q . k over n values: eight partial sums the compiler keeps in vector registers (a plain running sum
// is one chain of dependent adds, and float addition cannot be reordered for it).
__attribute__((always_inline)) inline float dot_unit(const float* a, const float* b, int n) {
  float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int i = 0; i < 8; ++i) s[i] += a[d + i] * b[d + i];
  }
  float tail = 0.0f;
  for (; d < n; ++d) tail += a[d] * b[d];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

__attribute__((always_inline)) inline float dot_strided(const float* a, int64_t as, const float* b, int64_t bs, int n) {
  float dot = 0.0f;
  for (int d = 0; d < n; ++d) dot += a[d * as] * b[d * bs];
  return dot;
}

// a = sum over t < n of p[t] * v[t] for rows of DV contiguous values, summed in t's order from zero (as
// the general loop below it does): the accumulators stay in vector registers over the run instead of being
// loaded and stored for every key.
template <int DV>
__attribute__((always_inline)) inline void weigh_values(const float* p, int n, const float* v, int64_t row_stride, float* a) {
  typedef float Lanes __attribute__((vector_size(64)));
  Lanes acc[DV / 16];
  for (auto& x : acc) x = Lanes{};
  for (int t = 0; t < n; ++t) {
    const float* row = v + t * row_stride;
    for (int i = 0; i < DV / 16; ++i) {
      Lanes x;
      std::memcpy(&x, row + 16 * i, sizeof x);
      acc[i] += p[t] * x;
    }
  }
  std::memcpy(a, acc, sizeof acc);
}

// Work is split by (batch, kv head, run of keys): each task reads its keys and values once for all the
// query heads that share them (grouped-query attention: 3 in SmolLM2, 7 in Qwen2.5-Coder-0.5B) and
// leaves, per query row and head, a partial softmax (its max, its sum, its weighted values); the merge
// rescales the runs to a common max. One read of the cache per kv head instead of one per query head,
// and enough tasks for every thread even with one or two kv heads.
// Keys per run of a task: enough work per task to hide the pool's hand-off, and at long contexts many runs
// for the threads to share even with one or two kv heads.
constexpr int kKeysPerRun = 128;

struct Split {
  const AttendJob* job;
  int chunks, chunk;  // runs of keys per (batch, kv head), keys per run
  float* partial;     // per (b, h, i, run): max, sum, Dv weighted values
  int stride;         // Dv + 2
};

float* partial_at(const Split& sp, int b, int h, int i, int run) {
  const AttendJob& j = *sp.job;
  return sp.partial + ((((static_cast<size_t>(b) * j.H + h) * j.Lq + i) * sp.chunks + run) * sp.stride);
}

__attribute__((always_inline)) inline void attend_run_body(void* ctx, int task) {
  const Split& sp = *static_cast<const Split*>(ctx);
  const AttendJob& j = *sp.job;
  const int run = task % sp.chunks, kvh = (task / sp.chunks) % j.KV, b = task / (sp.chunks * j.KV);
  const int G = j.H / j.KV;
  const int64_t *qs = j.qs, *ks = j.ks, *vs = j.vs;
  const bool unit = qs[3] == 1 && ks[3] == 1 && vs[3] == 1;
  const float* kbase = j.k + b * ks[0] + kvh * ks[1];
  const float* vbase = j.v + b * vs[0] + kvh * vs[1];
  const int t0 = run * sp.chunk;
  thread_local std::vector<float> scores;  // G rows of this run's keys
  scores.resize(static_cast<size_t>(G) * sp.chunk);
  for (int i = 0; i < j.Lq; ++i) {
    // Causal: query i sits at position S - Lq + i and sees keys up to it.
    const int visible = j.causal ? std::max(0, j.S - j.Lq + i + 1) : j.S;
    const int n = std::max(0, std::min(visible, std::min(j.S, t0 + sp.chunk)) - t0);
    const float* q0 = j.q + b * qs[0] + static_cast<int64_t>(kvh) * G * qs[1] + i * qs[2];
    for (int t = 0; t < n; ++t) {
      const float* krow = kbase + (t0 + t) * ks[2];
      for (int g = 0; g < G; ++g) {
        const float* qrow = q0 + g * qs[1];
        scores[static_cast<size_t>(g) * sp.chunk + t] =
            (unit ? dot_unit(qrow, krow, j.D) : dot_strided(qrow, qs[3], krow, ks[3], j.D)) * j.scale;
      }
    }
    for (int g = 0; g < G; ++g) {
      float* sc = scores.data() + static_cast<size_t>(g) * sp.chunk;
      float* out = partial_at(sp, b, kvh * G + g, i, run);
      float top = -std::numeric_limits<float>::infinity();
      for (int t = 0; t < n; ++t) top = std::max(top, sc[t]);
      // The exponentials apart from their sum: this loop vectorizes, the sum keeps its order.
      for (int t = 0; t < n; ++t) sc[t] = exp_nonpositive(sc[t] - top);
      float total = 0.0f;
      for (int t = 0; t < n; ++t) total += sc[t];
      out[0] = top;
      out[1] = total;
      const float* v0 = vbase + t0 * vs[2];
      if (unit && j.Dv == 64) {
        weigh_values<64>(sc, n, v0, vs[2], out + 2);
      } else if (unit && j.Dv == 128) {
        weigh_values<128>(sc, n, v0, vs[2], out + 2);
      } else {
        float* a = out + 2;
        std::fill(a, a + j.Dv, 0.0f);
        for (int t = 0; t < n; ++t) {
          const float* vrow = v0 + t * vs[2];
          for (int d = 0; d < j.Dv; ++d) a[d] += sc[t] * vrow[d * vs[3]];
        }
      }
    }
  }
}

// attend_run_body compiled for each ISA (GCC and Clang inline it into a function with more features), and
// the one this CPU has picked once. (GCC 12's target_clones("arch=x86-64-v4", ...) resolver ran the
// baseline build on every CPU tried, AVX-512 or not: 30 layers of SmolLM2's attention took 0.89 ms in SSE
// code and Qwen2.5-Coder-1.5B's, 128-wide heads, 3-5 ms a token.)
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))) void attend_run_avx512(void* ctx, int task) {
  attend_run_body(ctx, task);
}
__attribute__((target("avx2,fma,f16c"))) void attend_run_avx2(void* ctx, int task) { attend_run_body(ctx, task); }
#endif
void attend_run_baseline(void* ctx, int task) { attend_run_body(ctx, task); }

ThreadPool::TaskFn pick_attend_run() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512_attention()) return attend_run_avx512;
  if (cpu_has_avx2()) return attend_run_avx2;
#endif
  return attend_run_baseline;
}

void attend_run(void* ctx, int task) {
  static const ThreadPool::TaskFn chosen = pick_attend_run();
  chosen(ctx, task);
}

// out[b, i, h] = the runs' weighted values rescaled to their common max, over their rescaled sums.
void merge_runs(const Split& sp) {
  const AttendJob& j = *sp.job;
  for (int b = 0; b < j.B; ++b) {
    for (int i = 0; i < j.Lq; ++i) {
      for (int h = 0; h < j.H; ++h) {
        float* dst = j.out + ((static_cast<size_t>(b) * j.Lq + i) * j.H + h) * j.Dv;
        float top = -std::numeric_limits<float>::infinity();
        for (int r = 0; r < sp.chunks; ++r) {
          const float* p = partial_at(sp, b, h, i, r);
          if (p[1] > 0.0f) top = std::max(top, p[0]);
        }
        float total = 0.0f;
        std::fill(dst, dst + j.Dv, 0.0f);
        for (int r = 0; r < sp.chunks; ++r) {
          const float* p = partial_at(sp, b, h, i, r);
          if (p[1] <= 0.0f) continue;  // a run past this row's causal limit
          const float w = exp_nonpositive(p[0] - top);
          total += w * p[1];
          for (int d = 0; d < j.Dv; ++d) dst[d] += w * p[2 + d];
        }
        const float inv = total > 0.0f ? 1.0f / total : 0.0f;
        for (int d = 0; d < j.Dv; ++d) dst[d] *= inv;
      }
    }
  }
}

}  // namespace

void run_attend(AttendJob& job) {
  ThreadPool& pool = ThreadPool::instance();
  const int groups = job.B * job.KV;
  // Runs of a fixed kKeysPerRun keys from position 0, whatever S and Lq: a query row then sums its keys in
  // the same runs whether it is decoded alone or checked among speculative guesses (or prefilled), so its
  // result is bit-identical and greedy speculative decoding gives exactly the plain tokens. (Runs sized
  // from S moved the boundaries with every new key.)
  const int chunks = std::max(1, (job.S + kKeysPerRun - 1) / kKeysPerRun);
  Split sp{&job, chunks, kKeysPerRun, nullptr, job.Dv + 2};
  thread_local std::vector<float> partial;
  partial.resize(static_cast<size_t>(job.B) * job.H * job.Lq * chunks * sp.stride);
  sp.partial = partial.data();
  const int tasks = groups * chunks;
  // Below ~64k multiply-adds in all, waking the pool would cost more than the work.
  const int64_t work = static_cast<int64_t>(job.B) * job.H * job.Lq * job.S * (job.D + job.Dv);
  if (tasks == 1 || work < (1 << 16)) {
    for (int t = 0; t < tasks; ++t) attend_run(&sp, t);
  } else {
    pool.parallel_for(tasks, attend_run, &sp);
  }
  merge_runs(sp);
}

mx::array attend(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal,
                 mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  constexpr const char* op = "attend";
  check_op(stream.device == mx::Device::cpu, op, "runs on the CPU only");
  check_op(q.dtype() == mx::float32 && k.dtype() == mx::float32 && v.dtype() == mx::float32, op,
              "q, k and v must be float32");
  check_op(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4, op, "q, k and v must be (B, heads, length, D)");
  check_op(k.shape(0) == q.shape(0) && v.shape(0) == q.shape(0) && k.shape(3) == q.shape(3) &&
                  v.shape(1) == k.shape(1) && v.shape(2) == k.shape(2),
              op, "k and v must match q's batch and head width, and each other");
  check_op(k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0, op, "query heads must be a multiple of kv heads");
  return mx::array({q.shape(0), q.shape(2), q.shape(1) * v.shape(3)}, mx::float32,
                   std::make_shared<Attend>(stream, scale, causal), {q, k, v});
}

void Attend::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  run_on_stream(stream(), inputs, outputs, [scale = scale_, causal = causal_](std::vector<mx::array>& in,
                                                                              std::vector<mx::array>& out) {
    const mx::array &q = in[0], &k = in[1], &v = in[2];
    AttendJob job{q.data<float>(), k.data<float>(), v.data<float>(), {}, {}, {}, out[0].data<float>(), scale, causal,
                  q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), v.shape(3)};
    for (int d = 0; d < 4; ++d) {
      job.qs[d] = q.strides()[d];
      job.ks[d] = k.strides()[d];
      job.vs[d] = v.strides()[d];
    }
    run_attend(job);
  });
}

std::vector<mx::array> Attend::reference(const std::vector<mx::array>& inputs) {
  const mx::Stream s = stream();
  const mx::array &q = inputs[0], &v = inputs[2];
  const mx::array o = mx::fast::scaled_dot_product_attention(q, inputs[1], v, scale_, causal_ ? "causal" : "", {}, {},
                                                             false, s);
  return {mx::reshape(mx::transpose(o, {0, 2, 1, 3}, s), {q.shape(0), q.shape(2), q.shape(1) * v.shape(3)}, s)};
}

bool Attend::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const Attend&>(other);
  return scale_ == o.scale_ && causal_ == o.causal_;
}

}  // namespace macllm_cpu
