// src/gemm/grouped_gemm_down_proj.cu — role 2, down-projection forward: Y = A_e · W2_eᵀ (+b2)
// over contiguous grouped rows of A. A and B by TMA (ASource::kTma); plain bf16 store of Y (TMA
// store for tiles inside an expert).
#include <cuda_bf16.h>

#include "gemm/epilogue_store.cuh"
#include "gemm/launch_sm90_grouped.cuh"
#include "gemm/mainloop_sm90_tma_gather.cuh"
#include "gemm/tile_config.h"
#include "gemm/validate_grouped_gemm.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {

Status validate(const DownProjParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.intermediate, "intermediate"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.a, "a", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.w2, "w2", 16));
  SONICMOE_RETURN_IF_ERROR(require_optional_pointer(p.b2, "b2", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.y, "y", 16));
  return Status();
}

Status grouped_gemm_down_proj(const DownProjParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  // Nothing routed: nothing to write, and no TMA descriptor over a 0-row tensor (the driver
  // refuses one).
  if (p.num_rows == 0) return Status();
  using Cfg = gemm::DownProjTile;
  using Mainloop = gemm::MainloopSm90TmaGather<Cfg, cute::GMMA::Major::K, gemm::ASource::kTma>;
  using Epilogue = gemm::EpilogueStoreTma<Cfg>;
  using Element = typename Mainloop::Element;
  const int n_total = int(p.hidden);
  const int k = int(p.intermediate);
  gemm::GroupedKernelParams<Mainloop, Epilogue> params{
      .mainloop = Mainloop::make_args(p.w2, p.a, p.intermediate, nullptr, p.num_rows, n_total, k, int(p.num_experts)),
      .epilogue = {.tma_d = Epilogue::make_tma_d(reinterpret_cast<Element*>(p.y), int(p.num_rows), n_total),
                   .tail_boxes = {},  // filled below (make_row_box_tmas)
                   .bias = reinterpret_cast<const __nv_bfloat16*>(p.b2),
                   .num_rows = int(p.num_rows)},
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  SONICMOE_RETURN_IF_ERROR(Epilogue::Store::make_row_box_tmas(reinterpret_cast<Element*>(p.y), int(p.num_rows),
                                                               n_total, &params.epilogue.tail_boxes));
  return gemm::launch_grouped_gemm<Cfg>(params, stream);
}

}  // namespace sonicmoe
