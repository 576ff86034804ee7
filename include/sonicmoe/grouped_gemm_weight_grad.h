// sonicmoe/grouped_gemm_weight_grad.h — launch API of the weight-gradient GEMM roles (DESIGN.md
// §4, kernels 5 and 7): per expert, a reduction over that expert's routed rows ("varlen K").
//
// Expert row ranges come from `expert_offsets` in device memory (no host synchronisation;
// capturable in a CUDA graph). Experts without rows get an all-zero gradient. Every tensor is
// row-major bf16, fp32 accumulation. Arguments are validated on the host before any CUDA call.
// Device-array contract: expert_offsets[0] == 0, non-decreasing, expert_offsets[E] == num_rows;
// 0 <= gather_idx[r] < num_tokens (out-of-range values are read as zero rows, never out of bounds).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe {

// dW2[e] = Σ_{grouped rows r of e} dO[gather_idx[r], :]ᵀ ⊗ A'[r, :]   (A' = s·A, grouped order)
struct DownProjWeightGradParams {
  const bfloat16* grad_out = nullptr;       // dO [num_tokens, hidden], 16-byte aligned
  const bfloat16* a_scaled = nullptr;       // A' [num_rows, intermediate]
  const int32_t* expert_offsets = nullptr;  // device [num_experts + 1]
  const int32_t* gather_idx = nullptr;      // device [num_rows], grouped row -> token
  bfloat16* grad_w2 = nullptr;              // out [num_experts, hidden, intermediate]
  int64_t num_tokens = 0;
  int64_t num_rows = 0;
  int64_t hidden = 0;        // multiple of 8
  int64_t intermediate = 0;  // multiple of 8
  int64_t num_experts = 0;
};

// dW1[e] = Σ_{grouped rows r of e} dH[r, :]ᵀ ⊗ x[gather_idx[r], :]   (dH grouped, [TK, h_cols])
struct UpProjWeightGradParams {
  const bfloat16* grad_h = nullptr;         // dH [num_rows, h_cols], 16-byte aligned
  const bfloat16* x = nullptr;              // [num_tokens, hidden]
  const int32_t* expert_offsets = nullptr;  // device [num_experts + 1]
  const int32_t* gather_idx = nullptr;      // device [num_rows]
  bfloat16* grad_w1 = nullptr;              // out [num_experts, h_cols, hidden]
  int64_t num_tokens = 0;
  int64_t num_rows = 0;
  int64_t hidden = 0;  // multiple of 8
  int64_t h_cols = 0;  // 2n for SwiGLU, n otherwise; multiple of 8
  int64_t num_experts = 0;
};

Status validate(const DownProjWeightGradParams& params);
Status validate(const UpProjWeightGradParams& params);

Status grouped_gemm_down_proj_weight_grad(const DownProjWeightGradParams& params, cudaStream_t stream);
Status grouped_gemm_up_proj_weight_grad(const UpProjWeightGradParams& params, cudaStream_t stream);

}  // namespace sonicmoe
