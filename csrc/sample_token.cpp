// The next token from a row of logits, as macllm/generation/sampling.py's MLX composition picks it, in
// one node. Every step keeps MLX's CPU arithmetic and order (x86-64 wheels: one element at a time) so
// the result is the same to the bit: logsumexp sums exp(x - max) in index order; the filters are
// sample_filter.filter_logprobs's (top-k by the k-th largest value; min-p against max + log(min_p); top-p
// by the float32 softmax and cumulative sum over the values sorted in descending order, ties kept or
// dropped together); the draw is MLX's single-row categorical (exclusive cumulative sum of exp(x - max),
// the last index whose sum is <= u * total). What is cheaper here: exp vectorized (mlx_exp.cpp), no
// index sorts (the filters only need values: top-k a selection, top-p a radix sort of the values
// still finite, few after min-p or top-k), no intermediate arrays, and the alternatives picked in the same pass.
#include "sample_token.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>

#include "fused_common.h"
#include "mlx_exp.h"
#include "thread_pool.h"

namespace macllm_cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Scratch {
  std::vector<float> x, lp, scaled, work, sorted;
  std::vector<uint32_t> keys, keys_tmp;  // sort_descending's, sized on first use
};

// One set per thread: the op runs on the stream's worker thread.
Scratch& scratch(int vocab) {
  thread_local Scratch s;
  const size_t n = static_cast<size_t>(vocab);
  for (auto* v : {&s.x, &s.lp, &s.scaled, &s.work, &s.sorted}) {
    if (v->size() < n) v->resize(n);
  }
  return s;
}

// Maximum of a row; eight lanes so the compiler vectorizes it (a maximum does not depend on order).
float row_max(const float* x, int n) {
  float lanes[8];
  std::fill(lanes, lanes + 8, kNegInf);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lanes[j] = std::max(lanes[j], x[i + j]);
  }
  float top = kNegInf;
  for (int j = 0; j < 8; ++j) top = std::max(top, lanes[j]);
  for (; i < n; ++i) top = std::max(top, x[i]);
  return top;
}

// Sum in index order, as MLX's CPU reductions and scans add (the order decides the rounding).
float ordered_sum(const float* x, int n) {
  float total = 0.0f;
  for (int i = 0; i < n; ++i) total += x[i];
  return total;
}

// mx.logsumexp over the row.
float logsumexp(const float* x, float* work, int n) {
  const float top = row_max(x, n);
  if (std::isinf(top)) return top;
  exp_shifted(x, top, work, n);
  return std::log(ordered_sum(work, n)) + top;
}

// mx.argmax: the first index of the largest value.
uint32_t first_argmax(const float* x, int n) {
  const float top = row_max(x, n);
  for (int i = 0; i < n; ++i) {
    if (x[i] == top) return static_cast<uint32_t>(i);
  }
  return 0;  // no value equals the maximum: NaNs only, where mx.argmax also stays at 0
}

// The k largest values, largest first, ties by lower index.
void top_alternatives(const float* x, int n, int k, uint32_t* ids, float* values) {
  int have = 0;
  for (int i = 0; i < n; ++i) {
    const float v = x[i];
    if (have == k && !(v > values[k - 1])) continue;
    int at = have < k ? have++ : k - 1;
    while (at > 0 && v > values[at - 1]) {
      values[at] = values[at - 1];
      ids[at] = ids[at - 1];
      --at;
    }
    values[at] = v;
    ids[at] = static_cast<uint32_t>(i);
  }
}

// Sorts values (finite, no NaN) in descending order. Past a few hundred values by their 32-bit keys,
// 11 bits per pass (three passes): ~10x std::sort on a 49k vocabulary when top-p is the only filter.
void sort_descending(std::vector<float>& values, int n, std::vector<uint32_t>& keys, std::vector<uint32_t>& tmp) {
  if (n < 512) {
    std::sort(values.begin(), values.begin() + n, std::greater<float>());
    return;
  }
  if (keys.size() < static_cast<size_t>(n)) {
    keys.resize(n);
    tmp.resize(n);
  }
  for (int i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], sizeof bits);
    // Ascending order of floats as unsigned keys, inverted for descending.
    keys[i] = ~((bits & 0x80000000u) ? ~bits : (bits | 0x80000000u));
  }
  for (int shift = 0; shift < 32; shift += 11) {
    uint32_t count[2049] = {};
    for (int i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 2047u) + 1];
    for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
    for (int i = 0; i < n; ++i) tmp[count[(keys[i] >> shift) & 2047u]++] = keys[i];
    keys.swap(tmp);
  }
  for (int i = 0; i < n; ++i) {
    const uint32_t key = ~keys[i];
    const uint32_t bits = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
    std::memcpy(&values[i], &bits, sizeof bits);
  }
}

// The k-th largest value (with repeats) for top-k: a min-heap of the k largest seen, for the usual small k.
float kth_largest(const float* s, int n, int k, std::vector<float>& work) {
  if (k > 256) {
    // NaN (a broken model's logits) would break nth_element's ordering; it never passes a filter anyway.
    std::transform(s, s + n, work.begin(), [](float v) { return v != v ? kNegInf : v; });
    std::nth_element(work.begin(), work.begin() + (k - 1), work.begin() + n, std::greater<float>());
    return work[k - 1];
  }
  std::vector<float> heap(s, s + k);
  std::make_heap(heap.begin(), heap.end(), std::greater<float>());
  for (int i = k; i < n; ++i) {
    if (s[i] > heap.front()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<float>());
      heap.back() = s[i];
      std::push_heap(heap.begin(), heap.end(), std::greater<float>());
    }
  }
  return heap.front();
}

// top-p over the finite values of s: keep a value while the float32 probability mass strictly before
// the first of its equals, in descending order, is under top_p (filter_logprobs's cumsum and cummax).
void top_p_filter(float* s, int n, float top_p, Scratch& buf) {
  std::vector<float>& sorted = buf.sorted;
  float* work = buf.work.data();
  int finite = 0;
  for (int i = 0; i < n; ++i) {
    if (s[i] > kNegInf) sorted[finite++] = s[i];  // finite values; NaN never reaches the sort
  }
  if (finite == 0) return;
  sort_descending(sorted, finite, buf.keys, buf.keys_tmp);
  // mx.softmax of the sorted row: the -inf tail adds exact zeros to the normalizer.
  exp_shifted(sorted.data(), sorted[0], work, finite);
  const float inv = 1.0f / ordered_sum(work, finite);
  float mass = 0.0f, running = 0.0f;
  int kept = 0;
  for (int j = 0; j < finite; ++j) {
    const float p = work[j] * inv;
    mass = j == 0 ? p : mass + p;
    if (j == 0 || sorted[j] != sorted[j - 1]) running = std::max(running, mass - p);
    if (!(running < top_p)) break;  // cumulative maxima only grow: the kept tokens are a prefix
    kept = j + 1;
  }
  // Nothing kept (top_p <= 0): every token is filtered out, as in filter_logprobs.
  const float cut = kept > 0 ? sorted[kept - 1] : std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) {
    if (!(s[i] >= cut)) s[i] = kNegInf;
  }
}

// sample_filter.reference: filter the scaled log-probabilities, then draw with the uniform u.
uint32_t draw(const float* lp, int n, float u, const SampleSettings& cfg, Scratch& buf) {
  float* s = buf.scaled.data();
  float* w = buf.work.data();
  for (int i = 0; i < n; ++i) s[i] = lp[i] / cfg.temperature;
  if (cfg.top_k > 0 && cfg.top_k < n) {
    const float kth = kth_largest(s, n, cfg.top_k, buf.sorted);
    for (int i = 0; i < n; ++i) {
      if (s[i] < kth) s[i] = kNegInf;
    }
  }
  if (cfg.min_p > 0.0) {
    const float threshold = row_max(s, n) + std::log(static_cast<float>(cfg.min_p));
    for (int i = 0; i < n; ++i) {
      if (s[i] < threshold) s[i] = kNegInf;
    }
  }
  if (cfg.top_p < 1.0) top_p_filter(s, n, static_cast<float>(cfg.top_p), buf);
  // The draw: weights exp(x - max) (1 for each maximal value when the maximum is infinite), then the
  // last index whose exclusive cumulative weight is <= u * total. Zero weights leave the sums as they
  // are, so only the nonzero ones are visited.
  const float top = row_max(s, n);
  if (std::isinf(top)) {
    for (int i = 0; i < n; ++i) w[i] = s[i] == top ? 1.0f : 0.0f;
  } else {
    exp_shifted(s, top, w, n);
  }
  const float target = u * ordered_sum(w, n);
  float before = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (w[i] == 0.0f) continue;
    before += w[i];
    if (before > target) return static_cast<uint32_t>(i);
  }
  return static_cast<uint32_t>(n - 1);  // rounding put the target at the very end: MLX returns the last index
}

}  // namespace

std::vector<mx::array> choose_token(const mx::array& logits, const std::optional<mx::array>& u,
                                    const SampleSettings& settings, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  constexpr const char* op = "choose_token";
  check_op(stream.device == mx::Device::cpu, op, "runs on the CPU only");
  check_op(logits.dtype() == mx::float32 && logits.ndim() >= 1 && logits.shape(-1) > 0, op,
           "logits must be float32 (..., vocab) with a vocabulary");
  check_op(std::isfinite(settings.temperature) && settings.temperature >= 0.0f, op,
           "temperature must be 0 (greedy) or positive");
  check_op(settings.alternatives >= 0 && settings.alternatives <= logits.shape(-1), op,
           "alternatives must be between 0 and the vocabulary size");
  mx::Shape rows_shape(logits.shape().begin(), logits.shape().end() - 1);
  std::vector<mx::array> inputs{logits};
  if (settings.temperature > 0.0f) {
    check_op(u.has_value() && u->shape() == rows_shape && u->dtype() == mx::float32, op,
             "sampling needs u, one float32 uniform per row of logits");
    mx::Shape column = rows_shape;
    column.push_back(1);
    inputs.push_back(mx::reshape(*u, column, stream));  // row r's uniform lies at row_offset(u, r)
  }
  std::vector<mx::Shape> shapes{rows_shape, rows_shape};
  std::vector<mx::Dtype> dtypes{mx::uint32, mx::float32};
  if (settings.alternatives > 0) {
    mx::Shape alt = rows_shape;
    alt.push_back(settings.alternatives);
    shapes.insert(shapes.end(), {alt, alt});
    dtypes.insert(dtypes.end(), {mx::uint32, mx::float32});
  }
  return mx::array::make_arrays(shapes, dtypes, std::make_shared<ChooseToken>(stream, settings), inputs);
}

namespace {

struct Rows {
  const mx::array* logits;
  const mx::array* u;  // nullptr when greedy
  std::vector<mx::array>* out;
  SampleSettings cfg;
};

// One row, on whichever thread runs it (scratch is per thread).
void choose_row(void* ctx, int task) {
  const Rows& job = *static_cast<const Rows*>(ctx);
  const mx::array& logits = *job.logits;
  const SampleSettings& cfg = job.cfg;
  std::vector<mx::array>& out = *job.out;
  const size_t row = static_cast<size_t>(task);
  const int n = static_cast<int>(logits.shape(-1));
  const int64_t stride = logits.strides().back();
  Scratch& buf = scratch(n);
  const float* src = logits.data<float>() + row_offset(logits, row);
  const float* x = src;
  if (stride != 1) {
    for (int i = 0; i < n; ++i) buf.x[i] = src[i * stride];
    x = buf.x.data();
  }
  const float lse = logsumexp(x, buf.work.data(), n);
  float* lp = buf.lp.data();
  for (int i = 0; i < n; ++i) lp[i] = x[i] - lse;
  const uint32_t token = job.u != nullptr ? draw(lp, n, job.u->data<float>()[row_offset(*job.u, row)], cfg, buf)
                                          : first_argmax(lp, n);
  out[0].data<uint32_t>()[row] = token;
  out[1].data<float>()[row] = lp[token];
  if (cfg.alternatives > 0) {
    const size_t k = static_cast<size_t>(cfg.alternatives);
    top_alternatives(lp, n, cfg.alternatives, out[2].data<uint32_t>() + row * k, out[3].data<float>() + row * k);
  }
}

}  // namespace

void ChooseToken::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  run_on_stream(stream(), inputs, outputs, [cfg = settings_](std::vector<mx::array>& in, std::vector<mx::array>& out) {
    const size_t rows = in[0].size() / in[0].shape(-1);
    Rows job{&in[0], cfg.temperature > 0.0f ? &in[1] : nullptr, &out, cfg};
    // Several rows (speculative verification, a batch) go to the kernels' pool; a decode step's one row
    // stays on this thread (waking the pool would cost more than the ~0.1 ms it takes).
    if (rows == 1) {
      choose_row(&job, 0);
    } else {
      ThreadPool::instance().parallel_for(static_cast<int>(rows), choose_row, &job);
    }
  });
}

void ChooseToken::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[macllm MacllmChooseToken] runs on the CPU only (Metal uses sample_filter's kernel)");
}

bool ChooseToken::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const ChooseToken&>(other).settings_;
  return o.temperature == settings_.temperature && o.top_k == settings_.top_k && o.top_p == settings_.top_p &&
         o.min_p == settings_.min_p && o.alternatives == settings_.alternatives;
}

}  // namespace macllm_cpu
