// The decoder layer op (fused_layer.h): checks, the in-place cache hand-over, and the layer's steps in
// the per-op path's order and arithmetic.
#include "fused_layer.h"

#include <cstring>
#include <initializer_list>
#include <sstream>
#include <stdexcept>

#include "fused_attend.h"
#include "fused_common.h"
#include "fused_rows.h"
#include "op_check.h"
#include "qmm_prepare.h"
#include "qmm_rows.h"
#include "strided.h"

namespace macllm_cpu {
namespace {

constexpr const char* kOp = "decoder_layer";
enum Input { kX = 0, kNormIn, kNormPost, kCos, kSin, kKeys, kValues, kFirstProjection };
enum Proj { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kProjections };
const char* const kProjNames[kProjections] = {"q", "k", "v", "o", "gate", "up", "down"};

void check(bool ok, const std::string& what) { check_op(ok, kOp, what); }

int in_dims(const ProjectionSpec& spec, const mx::array& w) { return static_cast<int>(w.shape(1)) * 32 / spec.bits; }

// Per projection, where its arrays sit among the op's inputs.
struct ProjectionInputs {
  int w, bias = -1, a = -1;
};

std::vector<ProjectionInputs> locate(const std::vector<ProjectionSpec>& specs) {
  std::vector<ProjectionInputs> at;
  int next = kFirstProjection;
  for (const auto& spec : specs) {
    ProjectionInputs p{next};
    next += 3;
    if (spec.bias) p.bias = next++;
    if (spec.lora) {
      p.a = next;
      next += 2;
    }
    at.push_back(p);
  }
  return at;
}

// The output buffer takes the input's memory when MLX says nobody else can see it (what slice_update
// does); else it gets its own and the positions already cached are copied in the kernel.
bool adopt(const mx::array& in, mx::array& out) {
  if (!in.is_donatable() || !in.flags().row_contiguous || in.data_size() != in.size()) return false;
  out.copy_shared_buffer(in);
  return true;
}

// The first `positions` of each (batch, head) of a (B, heads, capacity, D) buffer, from any strides.
void copy_positions(const mx::array& src, float* dst, int positions) {
  const int B = src.shape(0), H = src.shape(1), cap = src.shape(2), D = src.shape(3);
  const auto& st = src.strides();
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      for (int t = 0; t < positions; ++t) {
        const float* row = src.data<float>() + b * st[0] + h * st[1] + t * st[2];
        float* out = dst + ((static_cast<size_t>(b) * H + h) * cap + t) * D;
        for (int d = 0; d < D; ++d) out[d] = row[d * st[3]];
      }
    }
  }
}

QuantOperands operands(const std::vector<mx::array>& in, const ProjectionSpec& spec, const ProjectionInputs& at) {
  QuantOperands q;
  q.w = &in[at.w];
  q.scales = &in[at.w + 1];
  q.biases = &in[at.w + 2];
  if (spec.lora) {
    q.a = &in[at.a];
    q.b = &in[at.a + 1];
    q.lora_scale = spec.lora_scale;
  }
  q.group_size = spec.group_size;
  q.bits = spec.bits;
  return q;
}

// outs[i] (M x N_i) = x @ W_i^T (+ the adapter's delta) (+ bias, as the model's separate add would) for
// the projections `which`, all of one input: one pass of the thread pool for all of them.
void project(const float* x, int M, const std::vector<mx::array>& in, const std::vector<ProjectionSpec>& specs,
             const std::vector<ProjectionInputs>& at, std::initializer_list<int> which, float* const* outs) {
  QuantOperands ops[kProjections];
  int count = 0;
  for (int p : which) ops[count++] = operands(in, specs[p], at[p]);
  quantized_rows_many(x, M, ops, outs, count);
  count = 0;
  for (int p : which) {
    float* out = outs[count++];
    if (!specs[p].bias) continue;
    const mx::array& bias = in[at[p].bias];
    const int N = static_cast<int>(bias.size());
    const float* bp = bias.data<float>();
    for (int r = 0; r < M; ++r) {
      for (int n = 0; n < N; ++n) out[static_cast<size_t>(r) * N + n] = out[static_cast<size_t>(r) * N + n] + bp[n];
    }
  }
}

void run_layer(const LayerShape& shape, const std::vector<ProjectionSpec>& specs, std::vector<mx::array>& in,
               std::vector<mx::array>& out, bool copy_keys, bool copy_values) {
  const std::vector<ProjectionInputs> at = locate(specs);
  const mx::array &x = in[kX], &cos = in[kCos], &sin = in[kSin];
  const int B = x.shape(0), L = x.shape(1), D = x.shape(2), M = B * L;
  const int H = shape.n_heads, KV = shape.n_kv_heads;
  const int cap = in[kKeys].shape(2), Dh = in[kKeys].shape(3), Dv = in[kValues].shape(3);
  const int F = static_cast<int>(in[at[kGate].w].shape(0)), R = cos.shape(1);
  float* keys = out[1].data<float>();
  float* values = out[2].data<float>();
  if (copy_keys) copy_positions(in[kKeys], keys, shape.offset);
  if (copy_values) copy_positions(in[kValues], values, shape.offset);

  // The stream's worker thread runs every layer: its scratch stays allocated between calls.
  thread_local std::vector<float> normed, q, k, v, rotated, attended, o, h, normed2, gate, up, down;
  normed.resize(static_cast<size_t>(M) * D);
  q.resize(static_cast<size_t>(M) * H * Dh);
  k.resize(static_cast<size_t>(M) * KV * Dh);
  v.resize(static_cast<size_t>(M) * KV * Dv);
  rotated.resize(q.size());
  attended.resize(static_cast<size_t>(M) * H * Dv);
  o.resize(normed.size());
  h.resize(normed.size());
  normed2.resize(normed.size());
  gate.resize(static_cast<size_t>(M) * F);
  up.resize(gate.size());
  down.resize(normed.size());

  const int64_t xs = x.strides().back();
  const mx::array &w_in = in[kNormIn], &w_post = in[kNormPost];
  for (int r = 0; r < M; ++r) {
    norm_row(x.data<float>() + row_offset(x, r), xs, nullptr, 0, w_in.data<float>(), w_in.strides()[0], D,
             shape.eps_in, nullptr, normed.data() + static_cast<size_t>(r) * D);
  }
  float* const qkv[] = {q.data(), k.data(), v.data()};
  project(normed.data(), M, in, specs, at, {kQ, kK, kV}, qkv);

  if (shape.qk_norm) {  // each head's row normalised in place (the norm reads a value before writing it)
    const float* qn = in[in.size() - 2].data<float>();
    const float* kn = in.back().data<float>();
    for (size_t row = 0; row < static_cast<size_t>(M) * H; ++row) {
      norm_row(q.data() + row * Dh, 1, nullptr, 0, qn, 1, Dh, shape.eps_qk, nullptr, q.data() + row * Dh);
    }
    for (size_t row = 0; row < static_cast<size_t>(M) * KV; ++row) {
      norm_row(k.data() + row * Dh, 1, nullptr, 0, kn, 1, Dh, shape.eps_qk, nullptr, k.data() + row * Dh);
    }
  }

  // Rope into the (B, H, L, Dh) layout for queries and straight into the cache for keys; values copied.
  const auto &cs = cos.strides(), &ss = sin.strides();
  for (int b = 0; b < B; ++b) {
    for (int l = 0; l < L; ++l) {
      const size_t r = static_cast<size_t>(b) * L + l;
      const float* c = cos.data<float>() + l * cs[0];
      const float* sn = sin.data<float>() + l * ss[0];
      for (int hd = 0; hd < H; ++hd) {
        rotate_row(q.data() + (r * H + hd) * Dh, 1, c, cs[1], sn, ss[1], R, Dh,
                   rotated.data() + ((static_cast<size_t>(b) * H + hd) * L + l) * Dh);
      }
      for (int kvh = 0; kvh < KV; ++kvh) {
        const size_t slot = (static_cast<size_t>(b) * KV + kvh) * cap + shape.offset + l;
        rotate_row(k.data() + (r * KV + kvh) * Dh, 1, c, cs[1], sn, ss[1], R, Dh, keys + slot * Dh);
        std::memcpy(values + slot * Dv, v.data() + (r * KV + kvh) * Dv, sizeof(float) * Dv);
      }
    }
  }

  const int64_t cap64 = cap;
  AttendJob job{rotated.data(), keys, values,
                {static_cast<int64_t>(H) * L * Dh, static_cast<int64_t>(L) * Dh, Dh, 1},
                {KV * cap64 * Dh, cap64 * Dh, Dh, 1},
                {KV * cap64 * Dv, cap64 * Dv, Dv, 1},
                attended.data(), shape.scale, shape.causal, B, H, KV, L, shape.offset + L, Dh, Dv};
  run_attend(job);
  float* const attention_out[] = {o.data()};
  project(attended.data(), M, in, specs, at, {kO}, attention_out);

  for (int r = 0; r < M; ++r) {
    const size_t row = static_cast<size_t>(r) * D;
    norm_row(x.data<float>() + row_offset(x, r), xs, o.data() + row, 1, w_post.data<float>(), w_post.strides()[0], D,
             shape.eps_post, h.data() + row, normed2.data() + row);
  }
  float* const gate_up[] = {gate.data(), up.data()};
  project(normed2.data(), M, in, specs, at, {kGate, kUp}, gate_up);
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = silu_times(gate[i], up[i]);
  float* const mlp_out[] = {down.data()};
  project(gate.data(), M, in, specs, at, {kDown}, mlp_out);
  float* result = out[0].data<float>();
  for (size_t i = 0; i < down.size(); ++i) result[i] = h[i] + down[i];
}

}  // namespace

std::vector<mx::array> decoder_layer(const mx::array& x, const mx::array& norm_in, const mx::array& norm_post,
                                     const mx::array& cos, const mx::array& sin, const mx::array& keys,
                                     const mx::array& values, const std::vector<Projection>& projections,
                                     int n_heads, int n_kv_heads, int offset, float eps_in, float eps_post,
                                     float scale, bool causal, const std::optional<mx::array>& q_norm,
                                     const std::optional<mx::array>& k_norm, float eps_qk, mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  check(stream.device == mx::Device::cpu, "runs on the CPU only");
  check(x.ndim() == 3 && x.dtype() == mx::float32, "x must be float32 (B, L, D)");
  const int B = x.shape(0), L = x.shape(1), D = x.shape(2);
  check(norm_in.ndim() == 1 && norm_post.ndim() == 1 && norm_in.shape(0) == D && norm_post.shape(0) == D &&
            norm_in.dtype() == mx::float32 && norm_post.dtype() == mx::float32,
        "the norms' weights must be float32 of x's width");
  check(keys.ndim() == 4 && values.ndim() == 4 && keys.dtype() == mx::float32 && values.dtype() == mx::float32,
        "the cache's keys and values must be float32 (B, heads, capacity, D)");
  check(keys.shape(0) == B && values.shape(0) == B && keys.shape(1) == n_kv_heads && values.shape(1) == n_kv_heads &&
            keys.shape(2) == values.shape(2),
        "the cache's buffers must have x's batch and the kv heads");
  check(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "query heads must be a multiple of kv heads");
  check(offset >= 0 && offset + L <= keys.shape(2), "the cache's buffers have no room for these positions");
  const int Dh = keys.shape(3), Dv = values.shape(3);
  check(cos.ndim() == 2 && sin.shape() == cos.shape() && cos.shape(0) == L && 2 * cos.shape(1) <= Dh &&
            cos.dtype() == mx::float32 && sin.dtype() == mx::float32,
        "cos and sin must be float32 (L, R) with 2R <= the head width");
  check(projections.size() == kProjections, "needs the q, k, v, o, gate, up and down projections");

  // Each projection's (input, output) width as the layer chains them.
  const int F = static_cast<int>(std::get<0>(projections[kGate]).shape(0));
  const int widths[kProjections][2] = {{D, n_heads * Dh}, {D, n_kv_heads * Dh}, {D, n_kv_heads * Dv},
                                       {n_heads * Dv, D}, {D, F}, {D, F}, {F, D}};
  std::vector<mx::array> inputs = {x, norm_in, norm_post, cos, sin, keys, values};
  std::vector<ProjectionSpec> specs;
  for (int p = 0; p < kProjections; ++p) {
    const auto& [w, scales, biases, bias, a, b, lora_scale, group_size, bits] = projections[p];
    const std::string name = std::string(kProjNames[p]) + " projection: ";
    ProjectionSpec spec{group_size, bits, bias.has_value(), a.has_value(), lora_scale};
    check(w.ndim() == 2 && bits > 0, name + "w must be a 2-D uint32 array");
    const int K = in_dims(spec, w), N = static_cast<int>(w.shape(0));
    check_quantized(kOp, stream, w, scales, biases, group_size, bits, K);
    std::ostringstream expected;
    expected << name << "expected " << widths[p][0] << " -> " << widths[p][1] << ", got " << K << " -> " << N;
    check(K == widths[p][0] && N == widths[p][1], expected.str());
    inputs.insert(inputs.end(), {row_contiguous(w, stream), row_contiguous(scales, stream),
                                 row_contiguous(biases, stream)});
    if (spec.bias) {
      check(bias->ndim() == 1 && bias->shape(0) == N && bias->dtype() == mx::float32, name + "bias must be float32 (N)");
      inputs.push_back(row_contiguous(*bias, stream));
    }
    check(a.has_value() == b.has_value(), name + "an adapter needs both a and b");
    if (spec.lora) {
      check(a->ndim() == 2 && b->ndim() == 2 && a->shape(0) == K && b->shape(1) == N && a->shape(1) == b->shape(0) &&
                is_float(a->dtype()) && is_float(b->dtype()),
            name + "the adapter's a must be float (K, r) and b float (r, N)");
      inputs.push_back(row_contiguous(*a, stream));
      inputs.push_back(row_contiguous(*b, stream));
    }
    specs.push_back(spec);
  }
  check(q_norm.has_value() == k_norm.has_value(), "q_norm and k_norm come together");
  if (q_norm) {
    check(q_norm->ndim() == 1 && k_norm->ndim() == 1 && q_norm->shape(0) == Dh && k_norm->shape(0) == Dh &&
              q_norm->dtype() == mx::float32 && k_norm->dtype() == mx::float32,
          "q_norm and k_norm must be float32 of the head width");
    inputs.push_back(row_contiguous(*q_norm, stream));
    inputs.push_back(row_contiguous(*k_norm, stream));
  }
  const LayerShape shape{n_heads, n_kv_heads, offset, eps_in, eps_post, scale, causal, q_norm.has_value(), eps_qk};
  return mx::array::make_arrays({x.shape(), keys.shape(), values.shape()}, {mx::float32, mx::float32, mx::float32},
                                std::make_shared<DecoderLayer>(stream, shape, std::move(specs)), inputs);
}

void DecoderLayer::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  // MLX gives each output of a node its own copy of the inputs, so while the other two outputs hold
  // theirs the cache's old buffers can never look donatable. Those copies are dropped here (MLX drops
  // them all right after this evaluation anyway); only the evaluated output's list, `inputs`, stays.
  for (auto& o : outputs) {
    if (&o.inputs() != &inputs && !o.is_tracer()) o.inputs().clear();
  }
  const bool copy_keys = !adopt(inputs[kKeys], outputs[1]);
  const bool copy_values = !adopt(inputs[kValues], outputs[2]);
  run_on_stream(stream(), inputs, outputs, [shape = shape_, specs = specs_, copy_keys, copy_values](
                                               std::vector<mx::array>& in, std::vector<mx::array>& out) {
    run_layer(shape, specs, in, out, copy_keys, copy_values);
  });
}

void DecoderLayer::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[macllm decoder_layer] runs on the CPU only (Metal uses the per-op path)");
}

std::vector<mx::array> DecoderLayer::vjp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                                         const std::vector<int>&, const std::vector<mx::array>&) {
  throw std::runtime_error("[macllm decoder_layer] is for inference: training runs the per-op path");
}

std::vector<mx::array> DecoderLayer::jvp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                                         const std::vector<int>&) {
  throw std::runtime_error("[macllm decoder_layer] is for inference: training runs the per-op path");
}

std::pair<std::vector<mx::array>, std::vector<int>> DecoderLayer::vmap(const std::vector<mx::array>&,
                                                                       const std::vector<int>&) {
  throw std::runtime_error("[macllm decoder_layer] has no vmap");
}

}  // namespace macllm_cpu
