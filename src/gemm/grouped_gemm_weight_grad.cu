// src/gemm/grouped_gemm_weight_grad.cu — roles 5 and 7, the weight gradients dW2 and dW1: the
// grouped skeleton with one varlen-K mainloop (both gather their left operand: dO for dW2, x for
// dW1 computed transposed) and the per-expert stores (dW1's transposed); both in one translation
// unit so the CuTe templates are paid for once.
#include <cuda_bf16.h>

#include "gemm/epilogue_weight_grad.cuh"
#include "gemm/launch_sm90_grouped.cuh"
#include "gemm/mainloop_sm90_cpasync_varlen_k.cuh"
#include "gemm/tile_config.h"
#include "gemm/validate_grouped_gemm.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {
namespace {

using Cfg = gemm::WeightGradTile;
// Both gather their left operand (dW2: dO; dW1, computed transposed as xᵀ·dH: x) 128 wide by
// cp.async; the right one comes by TMA. One mainloop for both.
using Mainloop = gemm::MainloopSm90CpAsyncVarlenK<Cfg>;
using Element = Mainloop::Element;
using StoreDownProjWeightGrad = gemm::EpilogueWeightGradTma<Cfg, false>;  // dW2 [E, d, n]
using StoreUpProjWeightGrad = gemm::EpilogueWeightGradTma<Cfg, true>;     // dW1 [E, 2n, d] = Cᵀ

}  // namespace

Status validate(const DownProjWeightGradParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.intermediate, "intermediate"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_gradient_rows(p.num_experts, p.hidden, "hidden"));  // dW2 [E, d, n]
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_tokens, "num_tokens", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_out, "grad_out", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  // Row-indexed arrays may be null when nothing is routed (the gradient is then all zeros).
  const auto require_rows = p.num_rows > 0 ? require_pointer : require_optional_pointer;
  SONICMOE_RETURN_IF_ERROR(require_rows(p.a_scaled, "a_scaled", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_w2, "grad_w2", 16));
  return Status();
}

Status validate(const UpProjWeightGradParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.h_cols, "h_cols"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_gradient_rows(p.num_experts, p.h_cols, "h_cols"));  // dW1 [E, 2n, d]
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_tokens, "num_tokens", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.x, "x", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  const auto require_rows = p.num_rows > 0 ? require_pointer : require_optional_pointer;
  SONICMOE_RETURN_IF_ERROR(require_rows(p.grad_h, "grad_h", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_w1, "grad_w1", 16));
  return Status();
}

// Nothing routed: every expert's gradient is zero (and there is no row tensor to describe).
static Status zero_gradient(bfloat16* out, int64_t count, cudaStream_t stream) {
  return gemm::cuda_status(cudaMemsetAsync(out, 0, size_t(count) * sizeof(bfloat16), stream), "cudaMemsetAsync");
}

Status grouped_gemm_down_proj_weight_grad(const DownProjWeightGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return zero_gradient(p.grad_w2, p.num_experts * p.hidden * p.intermediate, stream);
  const auto* a_scaled = reinterpret_cast<const Element*>(p.a_scaled);
  auto* grad_w2 = reinterpret_cast<__nv_bfloat16*>(p.grad_w2);
  const gemm::GroupedKernelParams<Mainloop, StoreDownProjWeightGrad> params{
      .mainloop = {.left = {reinterpret_cast<const Element*>(p.grad_out), p.hidden, p.gather_idx, p.num_tokens},
                   .right = {a_scaled, p.intermediate, nullptr, p.num_rows},
                   .m = int(p.hidden),
                   .n = int(p.intermediate),
                   .tma = Mainloop::make_tma_contig(a_scaled, int(p.intermediate), int(p.num_rows),
                                                   p.intermediate)},
      .epilogue = {.tma = StoreDownProjWeightGrad::make_tma(grad_w2, int(p.num_experts), int(p.hidden),
                                                            int(p.intermediate)),
                   .out = grad_w2,
                   .m = int(p.hidden),
                   .experts = int(p.num_experts)},
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  return gemm::launch_grouped_gemm<Cfg>(params, stream);
}

Status grouped_gemm_up_proj_weight_grad(const UpProjWeightGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return zero_gradient(p.grad_w1, p.num_experts * p.h_cols * p.hidden, stream);
  const auto* grad_h = reinterpret_cast<const Element*>(p.grad_h);
  // C[m, n] = Σ_rows x[gather(r), m] · dH[r, n] = dW1_e[n, m]: stored transposed.
  auto* grad_w1 = reinterpret_cast<__nv_bfloat16*>(p.grad_w1);
  const gemm::GroupedKernelParams<Mainloop, StoreUpProjWeightGrad> params{
      .mainloop = {.left = {reinterpret_cast<const Element*>(p.x), p.hidden, p.gather_idx, p.num_tokens},
                   .right = {grad_h, p.h_cols, nullptr, p.num_rows},
                   .m = int(p.hidden),
                   .n = int(p.h_cols),
                   .tma = Mainloop::make_tma_contig(grad_h, int(p.h_cols), int(p.num_rows), p.h_cols)},
      .epilogue = {.tma = StoreUpProjWeightGrad::make_tma(grad_w1, int(p.num_experts), int(p.hidden),
                                                          int(p.h_cols)),
                   .out = grad_w1,
                   .m = int(p.hidden),
                   .experts = int(p.num_experts)},
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  return gemm::launch_grouped_gemm<Cfg>(params, stream);
}

}  // namespace sonicmoe
