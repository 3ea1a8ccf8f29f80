// Attention for a few query rows over the KV cache: scores, softmax and the weighted sum in one pass
// per head, reading the cache's buffers where they lie. Heads are split over the kernel thread pool
// when the cache is long enough for it to pay.
#include <algorithm>
#include <cmath>
#include <limits>

#include "fused_attend.h"
#include "fused_common.h"
#include "fused_ops.h"
#include "fused_rows.h"
#include "thread_pool.h"

namespace macllm_cpu {
namespace {

// q . k over n values: eight partial sums the compiler keeps in vector registers (a plain running sum
// is one chain of dependent adds, and float addition cannot be reordered for it).
inline float dot_unit(const float* a, const float* b, int n) {
  float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int i = 0; i < 8; ++i) s[i] += a[d + i] * b[d + i];
  }
  float tail = 0.0f;
  for (; d < n; ++d) tail += a[d] * b[d];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

inline float dot_strided(const float* a, int64_t as, const float* b, int64_t bs, int n) {
  float dot = 0.0f;
  for (int d = 0; d < n; ++d) dot += a[d * as] * b[d * bs];
  return dot;
}

// All query rows of one (batch, head) pair: scores, their max, exp and sum, then the weighted values,
// each a loop of its own so each vectorises. Rows with unit inner strides (the cache's buffers, the
// decoder layer's scratch) take the vectorised dot products.
MACLLM_VECTOR_CLONES void attend_head(void* ctx, int task) {
  const AttendJob& j = *static_cast<const AttendJob*>(ctx);
  const int b = task / j.H, h = task % j.H;
  const int kvh = h / (j.H / j.KV);
  const int64_t *qs = j.qs, *ks = j.ks, *vs = j.vs;
  const bool unit = qs[3] == 1 && ks[3] == 1 && vs[3] == 1;
  const float* kbase = j.k + b * ks[0] + kvh * ks[1];
  const float* vbase = j.v + b * vs[0] + kvh * vs[1];
  thread_local std::vector<float> scores, acc;
  scores.resize(j.S);
  acc.resize(j.Dv);
  float* sc = scores.data();
  float* a = acc.data();
  for (int i = 0; i < j.Lq; ++i) {
    const float* qrow = j.q + b * qs[0] + h * qs[1] + i * qs[2];
    // Causal: query i sits at position S - Lq + i and sees keys up to it.
    const int visible = j.causal ? std::max(0, j.S - j.Lq + i + 1) : j.S;
    for (int t = 0; t < visible; ++t) {
      const float* krow = kbase + t * ks[2];
      sc[t] = (unit ? dot_unit(qrow, krow, j.D) : dot_strided(qrow, qs[3], krow, ks[3], j.D)) * j.scale;
    }
    float top = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < visible; ++t) top = std::max(top, sc[t]);
    float total = 0.0f;
    for (int t = 0; t < visible; ++t) {
      sc[t] = exp_nonpositive(sc[t] - top);
      total += sc[t];
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int t = 0; t < visible; ++t) {
      const float p = sc[t];
      const float* vrow = vbase + t * vs[2];
      if (unit) {
        for (int d = 0; d < j.Dv; ++d) a[d] += p * vrow[d];
      } else {
        for (int d = 0; d < j.Dv; ++d) a[d] += p * vrow[d * vs[3]];
      }
    }
    float* dst = j.out + ((static_cast<size_t>(b) * j.Lq + i) * j.H + h) * j.Dv;
    const float inv = visible > 0 ? 1.0f / total : 0.0f;
    for (int d = 0; d < j.Dv; ++d) dst[d] = a[d] * inv;
  }
}

}  // namespace

void run_attend(AttendJob& job) {
  const int tasks = job.B * job.H;
  // Below ~64k multiply-adds a head is a few microseconds: waking the pool would cost more.
  const int64_t work = static_cast<int64_t>(job.Lq) * job.S * (job.D + job.Dv);
  if (work * tasks < (1 << 16)) {
    for (int t = 0; t < tasks; ++t) attend_head(&job, t);
  } else {
    ThreadPool::instance().parallel_for(tasks, attend_head, &job);
  }
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
