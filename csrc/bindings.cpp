// Python module macllm.cpu_kernels._cpu_quant (built by scripts/build_kernels.sh).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "fused_layer.h"
#include "fused_ops.h"
#include "gather_qmm.h"
#include "qmm_dispatch.h"
#include "qmm_primitive.h"
#include "qmm_transposed.h"
#include "sample_token.h"
#include "thread_pool.h"

namespace nb = nanobind;
namespace mx = mlx::core;
using namespace nb::literals;

NB_MODULE(_cpu_quant, m) {
  m.doc() = "macllm's CPU quantized matmul for MLX (docs/kernels.md)";
  m.def("quantized_matmul", &macllm_cpu::quantized_matmul, "x"_a, "w"_a, "scales"_a, "biases"_a, "group_size"_a,
        "bits"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x @ dequantize(w)^T on the CPU (mx.quantized_matmul, transpose=True, affine).");
  m.def("quantized_matmul_lora", &macllm_cpu::quantized_matmul_lora, "x"_a, "w"_a, "scales"_a, "biases"_a, "a"_a,
        "b"_a, "scale"_a, "group_size"_a, "bits"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x @ dequantize(w)^T + scale * (x @ a) @ b in one node (a LoRA adapter on a quantized layer).");
  m.def("quantized_matmul_transposed", &macllm_cpu::quantized_matmul_transposed, "cot"_a, "w"_a, "scales"_a,
        "biases"_a, "group_size"_a, "bits"_a, nb::kw_only(), "stream"_a = nb::none(),
        "cot @ dequantize(w) (mx.quantized_matmul with transpose=False): the gradient's product.");
  m.def("gather_quantized_matmul", &macllm_cpu::gather_quantized_matmul, "x"_a, "w"_a, "scales"_a, "biases"_a,
        "indices"_a, "group_size"_a, "bits"_a, nb::kw_only(), "stream"_a = nb::none(),
        "Each row of x times its expert's quantized matrix (mx.gather_qmm, rhs indices, transpose=True, affine).");
  m.def("rms_norm", &macllm_cpu::rms_norm, "x"_a, "w"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none(),
        "mx.fast.rms_norm in one CPU node (float32).");
  m.def("residual_rms_norm", &macllm_cpu::residual_rms_norm, "x"_a, "r"_a, "w"_a, "eps"_a, nb::kw_only(),
        "stream"_a = nb::none(), "(x + r, rms_norm(x + r, w, eps)) in one CPU node (float32).");
  m.def("rotate_heads", &macllm_cpu::rotate_heads, "x"_a, "cos"_a, "sin"_a, nb::kw_only(), "stream"_a = nb::none(),
        "Half-split rotary embedding of x (B, L, H, D) from cos/sin tables (L, R); returns (B, H, L, D).");
  m.def("attend", &macllm_cpu::attend, "q"_a, "k"_a, "v"_a, "scale"_a, "causal"_a, nb::kw_only(),
        "stream"_a = nb::none(), "Grouped-query attention of q (B, H, Lq, D) over k, v; returns (B, Lq, H * Dv).");
  m.def("causal_softmax", &macllm_cpu::causal_softmax, "scores"_a, "scale"_a, "queries"_a, nb::kw_only(),
        "stream"_a = nb::none(), "softmax(scores * scale) with the causal mask, runs of `queries` rows per head.");
  m.def("silu_mul", &macllm_cpu::silu_mul, "g"_a, "u"_a, nb::kw_only(), "stream"_a = nb::none(), "silu(g) * u.");
  m.def("decoder_layer", &macllm_cpu::decoder_layer, "x"_a, "norm_in"_a, "norm_post"_a, "cos"_a, "sin"_a, "keys"_a,
        "values"_a, "projections"_a, "n_heads"_a, "n_kv_heads"_a, "offset"_a, "eps_in"_a, "eps_post"_a, "scale"_a,
        "causal"_a, "q_norm"_a = nb::none(), "k_norm"_a = nb::none(), "eps_qk"_a = 0.0f, nb::kw_only(),
        "stream"_a = nb::none(),
        "A Llama-shaped decoder layer in one node: (out, keys, values), the cache buffers written at offset.");
  m.def(
      "choose_token",
      [](const mx::array& logits, const std::optional<mx::array>& u, float temperature, int top_k, double top_p,
         double min_p, int alternatives, mx::StreamOrDevice s) {
        return macllm_cpu::choose_token(logits, u, {temperature, top_k, top_p, min_p, alternatives}, s);
      },
      "logits"_a, "u"_a = nb::none(), "temperature"_a = 0.0f, "top_k"_a = 0, "top_p"_a = 1.0, "min_p"_a = 0.0,
      "alternatives"_a = 0, nb::kw_only(), "stream"_a = nb::none(),
      "The next token from float32 logits (..., vocab) in one node: [token, its log-probability] and with "
      "alternatives > 0 [their ids, their log-probabilities]; greedy, or drawn with the uniforms u after "
      "temperature, top-k, min-p and top-p, exactly as macllm.generation.sampling's MLX composition.");
  m.def("available_isas", &macllm_cpu::available_isas, "Kernel variants this CPU runs, best first.");
  m.def("isa", &macllm_cpu::current_isa, "The kernel variant in use.");
  m.def("set_isa", &macllm_cpu::set_isa, "name"_a, "Use another variant (tests compare them all).");
  m.def("int8_available", &macllm_cpu::int8_available, "Whether the CPU runs the int8-activation kernel (AVX-512 VNNI and VBMI).");
  m.def("int8", &macllm_cpu::int8_enabled, "Whether quantized layers compute on int8 activations.");
  m.def("set_int8", &macllm_cpu::set_int8, "on"_a, "Int8 activations (AVX-512 VNNI and VBMI only).");
  m.def("set_prefill_rows", &macllm_cpu::set_prefill_rows, "rows"_a,
        "From how many rows prefill uses dequantized tiles + sgemm (0: never; -1: 32 on float activations, 160 on int8 ones).");
  m.def("prefill_rows", &macllm_cpu::get_prefill_rows);
  m.def("has_fast_sgemm", &macllm_cpu::prefill_uses_sgemm, "Whether OpenBLAS/Accelerate's sgemm was found.");
  m.def("threads", [] { return macllm_cpu::ThreadPool::instance().threads(); }, "Threads a matmul is split over.");
}
