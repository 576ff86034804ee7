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

// C_e[m, n] = Σ_{rows r of e} gathered[gather_idx[r], m] · contiguous[r, n] for every expert e,
// stored by Store into out (dW2 as it is, dW1 transposed).
template <class Store>
Status launch_weight_grad(const void* gathered, const int32_t* gather_idx, int64_t num_tokens, const void* contiguous,
                          int64_t m, int64_t n, int64_t num_rows, const int32_t* expert_offsets, int64_t num_experts,
                          void* out, cudaStream_t stream) {
  const auto* right = reinterpret_cast<const Element*>(contiguous);
  auto* result = reinterpret_cast<__nv_bfloat16*>(out);
  const gemm::GroupedKernelParams<Mainloop, Store> params{
      .mainloop = {.left = {reinterpret_cast<const Element*>(gathered), m, gather_idx, num_tokens},
                   .right = {right, n, nullptr, num_rows},
                   .m = int(m),
                   .n = int(n),
                   .tma = Mainloop::make_tma_contig(right, int(n), int(num_rows), n)},
      .epilogue = {.tma = Store::make_tma(result, int(num_experts), int(m), int(n)),
                   .out = result,
                   .m = int(m),
                   .experts = int(num_experts)},
      .expert_offsets = expert_offsets,
      .num_experts = int(num_experts),
      .num_rows = int(num_rows)};
  return gemm::launch_grouped_gemm<Cfg>(params, stream);
}

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
  return launch_weight_grad<StoreDownProjWeightGrad>(p.grad_out, p.gather_idx, p.num_tokens, p.a_scaled, p.hidden,
                                                     p.intermediate, p.num_rows, p.expert_offsets, p.num_experts,
                                                     p.grad_w2, stream);
}

Status grouped_gemm_up_proj_weight_grad(const UpProjWeightGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return zero_gradient(p.grad_w1, p.num_experts * p.h_cols * p.hidden, stream);
  // C[m, n] = Σ_rows x[gather(r), m] · dH[r, n] = dW1_e[n, m]: stored transposed.
  return launch_weight_grad<StoreUpProjWeightGrad>(p.x, p.gather_idx, p.num_tokens, p.grad_h, p.hidden, p.h_cols,
                                                   p.num_rows, p.expert_offsets, p.num_experts, p.grad_w1, stream);
}

}  // namespace sonicmoe
