// src/gemm/grouped_gemm_down_proj_act_grad.cu — role 4, dH: dO rows gathered by cp.async, W2 by
// TMA as stored ([E, d, n] is MN-major for this GEMM), and the dSwiGLU / s·A / partial-dS
// epilogue; ping-pong 64x256 tiles for short k-loops, cooperative 128x256 for long ones
// (tile_config.h).
#include <cuda_bf16.h>

#include "gemm/epilogue_dswiglu.cuh"
#include "gemm/launch_sm90_grouped.cuh"
#include "gemm/mainloop_sm90_tma_gather.cuh"
#include "gemm/tile_config.h"
#include "gemm/validate_grouped_gemm.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {

int64_t down_proj_act_grad_partial_cols(int64_t intermediate) {
  constexpr int kTileN = gemm::DownProjActGradTilePingPong::kTileN;  // both tiles' (tile_config.h)
  return (intermediate + kTileN - 1) / kTileN;
}

Status validate(const DownProjActGradParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.intermediate, "intermediate"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_tokens, "num_tokens", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_out, "grad_out", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.w2, "w2", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  // Row-indexed arrays may be null when nothing is routed.
  const auto require_rows = p.num_rows > 0 ? require_pointer : require_optional_pointer;
  SONICMOE_RETURN_IF_ERROR(require_rows(p.h, "h", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.scores, "scores", 4));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.scatter_idx, "scatter_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.grad_h, "grad_h", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.a_scaled, "a_scaled", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.ds_partial, "ds_partial", 4));
  return Status();
}

namespace {
template <class Cfg>
Status launch_act_grad(const DownProjActGradParams& p, cudaStream_t stream) {
  using Mainloop = gemm::MainloopSm90TmaGather<Cfg, cute::GMMA::Major::MN>;
  using Epilogue = gemm::EpilogueDSwiGLU;
  const int n_total = int(p.intermediate);
  const int k = int(p.hidden);
  gemm::GroupedKernelParams<Mainloop, Epilogue> params{
      .mainloop = Mainloop::make_args(p.w2, p.grad_out, p.hidden, p.gather_idx, p.num_tokens, n_total, k,
                                      int(p.num_experts)),
      .epilogue = {.h = reinterpret_cast<const __nv_bfloat16*>(p.h),
                   .scores = p.scores,
                   .scatter = p.scatter_idx,
                   .grad_h = reinterpret_cast<__nv_bfloat16*>(p.grad_h),
                   .a_scaled = reinterpret_cast<__nv_bfloat16*>(p.a_scaled),
                   .ds_partial = p.ds_partial,
                   .n = p.intermediate,
                   .ds_cols = int(down_proj_act_grad_partial_cols(p.intermediate))},
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  return gemm::launch_grouped_gemm<Cfg>(params, stream);
}
}  // namespace

Status grouped_gemm_down_proj_act_grad(const DownProjActGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  if (p.hidden >= gemm::kDownProjActGradCooperativeMinHidden)
    return launch_act_grad<gemm::DownProjActGradTileCooperative>(p, stream);
  return launch_act_grad<gemm::DownProjActGradTilePingPong>(p, stream);
}

}  // namespace sonicmoe
