// sonicmoe/grouped_gemm_act_grad.h — launch API of the down-projection activation-gradient role
// (DESIGN.md §4, kernel 4: "dH"), SwiGLU.
//
//   dA'[r, :] = dO[gather_idx[r], :] · W2_e          (the GEMM; W2 [E, d, n] read as stored)
//   then per element, from the saved pre-activation H and s = scores[scatter_idx[r]]:
//   grad_h   = dSwiGLU(H; s·dA')          [TK, 2n] grouped, (dgate, dup) interleaved like H
//   a_scaled = s · SwiGLU(H)              [TK, n]  grouped (the dW2 GEMM's operand)
//   ds_partial[scatter_idx[r], j] = Σ over N tile j of dA'·SwiGLU(H)   [TK, ds_partial_cols] fp32
// dS (the score gradient) is the row sum of ds_partial (plus <dO, b2_e> with bias): no atomics,
// so it is bitwise deterministic. Validated on the host; no synchronisation; graph capturable.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe {

struct DownProjActGradParams {
  const bfloat16* grad_out = nullptr;       // dO [num_tokens, hidden], 16-byte aligned
  const bfloat16* w2 = nullptr;             // [num_experts, hidden, intermediate]
  const bfloat16* h = nullptr;              // [num_rows, 2*intermediate] (the forward's H)
  const float* scores = nullptr;            // [num_rows] flat order
  const int32_t* expert_offsets = nullptr;  // device [num_experts + 1]
  const int32_t* gather_idx = nullptr;      // device [num_rows] grouped row -> token
  const int32_t* scatter_idx = nullptr;     // device [num_rows] grouped row -> flat slot
  bfloat16* grad_h = nullptr;               // out [num_rows, 2*intermediate]
  bfloat16* a_scaled = nullptr;             // out [num_rows, intermediate]
  float* ds_partial = nullptr;              // out [num_rows, down_proj_act_grad_partial_cols(intermediate)]
  int64_t num_tokens = 0;
  int64_t num_rows = 0;
  int64_t hidden = 0;        // multiple of 8
  int64_t intermediate = 0;  // multiple of 8
  int64_t num_experts = 0;
};

// Columns of ds_partial: one per N tile of the GEMM.
int64_t down_proj_act_grad_partial_cols(int64_t intermediate);

Status validate(const DownProjActGradParams& params);
Status grouped_gemm_down_proj_act_grad(const DownProjActGradParams& params, cudaStream_t stream);

}  // namespace sonicmoe
