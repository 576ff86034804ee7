// src/gemm/grouped_gemm_up_proj.cu — role 1, up-projection forward: H = x[gather] · W1_eᵀ (+b1)
// with the SwiGLU epilogue writing H (TMA store for tiles inside an expert) and A. Argument checks, then the skeleton instantiated with
// the cp.async gather mainloop and EpilogueSwiGLU.
#include <cuda_bf16.h>

#include "gemm/epilogue_swiglu.cuh"
#include "gemm/launch_sm90_grouped.cuh"
#include "gemm/mainloop_sm90_tma_gather.cuh"
#include "gemm/tile_config.h"
#include "gemm/validate_grouped_gemm.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {

Status validate(const UpProjParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.intermediate, "intermediate"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_tokens, "num_tokens", 0));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  if (p.num_rows > 0 && p.num_tokens == 0)
    return Status::invalid_argument("num_tokens", "must be > 0 when num_rows > 0 (gather_idx indexes x's rows)");
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.x, "x", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.w1, "w1", 16));
  SONICMOE_RETURN_IF_ERROR(require_optional_pointer(p.b1, "b1", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.h, "h", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.a, "a", 16));
  return Status();
}

Status grouped_gemm_up_proj(const UpProjParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  // Nothing routed: nothing to write, and no TMA descriptor over a 0-row tensor (the driver
  // refuses one).
  if (p.num_rows == 0) return Status();
  using Cfg = gemm::UpProjTile;
  using Mainloop = gemm::MainloopSm90TmaGather<Cfg>;
  using Epilogue = gemm::EpilogueSwiGLUTma<Cfg>;
  using Element = typename Mainloop::Element;
  const int n_total = int(2 * p.intermediate);
  const int k = int(p.hidden);
  gemm::GroupedKernelParams<Mainloop, Epilogue> params{
      .mainloop = Mainloop::make_args(p.w1, p.x, p.hidden, p.gather_idx, p.num_tokens, n_total, k, int(p.num_experts)),
      .epilogue = {.tma_h = Epilogue::make_tma_h(reinterpret_cast<Element*>(p.h), int(p.num_rows), n_total),
                   .tail_boxes = {},  // filled below (make_row_box_tmas)
                   .h = reinterpret_cast<__nv_bfloat16*>(p.h),
                   .a = reinterpret_cast<__nv_bfloat16*>(p.a),
                   .bias = reinterpret_cast<const __nv_bfloat16*>(p.b1),
                   .ldh = 2 * p.intermediate,
                   .lda = p.intermediate,
                   .num_rows = int(p.num_rows)},
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  SONICMOE_RETURN_IF_ERROR(Epilogue::Store::make_row_box_tmas(reinterpret_cast<Element*>(p.h), int(p.num_rows),
                                                               n_total, &params.epilogue.tail_boxes));
  return gemm::launch_grouped_gemm<Cfg>(params, stream);
}

}  // namespace sonicmoe
