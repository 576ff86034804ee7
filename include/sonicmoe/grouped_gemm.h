// sonicmoe/grouped_gemm.h — launch API of the six expert GEMM roles (DESIGN.md §4): up-proj
// (gather + SwiGLU), down-proj, dH (gather + dSwiGLU / s·A / partial dS), dW2 and dW1 (varlen K,
// gather) and dX̃.
//
// Each role is one persistent warp-specialized sm_90a kernel over all experts at once. Expert row
// counts stay on the device: the kernel walks `expert_offsets` itself, so a launch needs no host
// synchronisation and can be captured in a CUDA graph. All tensors are row-major bf16 with fp32
// accumulation; rows of H, A and Y are in grouped order (sorted by expert).
//
// Every entry point validates its arguments on the host before touching the GPU and returns a
// Status naming the argument and the rule. Contents of device arrays (offsets, indices) cannot be
// checked without a synchronisation; the kernels clamp them so that bad values never read or
// write out of bounds, but the results are then meaningless. Contract for them:
//   expert_offsets[0] == 0, non-decreasing, expert_offsets[E] == num_rows;
//   0 <= gather_idx[r] < num_tokens.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe {

// Up-projection forward with the SwiGLU epilogue:
//   H[r, :] = x[gather_idx[r], :] · W1_eᵀ (+ b1_e)   for every grouped row r of expert e,
//   A[r, j] = silu(H[r, 2j]) · H[r, 2j+1]            computed from the fp32 accumulator.
struct UpProjParams {
  const bfloat16* x = nullptr;               // [num_tokens, hidden], 16-byte aligned
  const bfloat16* w1 = nullptr;              // [num_experts, 2*intermediate, hidden], gate/up rows interleaved
  const bfloat16* b1 = nullptr;              // optional [num_experts, 2*intermediate]
  const int32_t* expert_offsets = nullptr;   // device [num_experts + 1], exclusive prefix sum
  const int32_t* gather_idx = nullptr;       // device [num_rows], grouped row -> token
  bfloat16* h = nullptr;                     // out [num_rows, 2*intermediate]
  bfloat16* a = nullptr;                     // out [num_rows, intermediate]
  int64_t num_tokens = 0;                    // T
  int64_t num_rows = 0;                      // TK, routed rows
  int64_t hidden = 0;                        // d, multiple of 8
  int64_t intermediate = 0;                  // n, multiple of 8
  int64_t num_experts = 0;                   // E
};

// Down-projection forward: Y[r, :] = A[r, :] · W2_eᵀ (+ b2_e), A in grouped order.
struct DownProjParams {
  const bfloat16* a = nullptr;               // [num_rows, intermediate], 16-byte aligned
  const bfloat16* w2 = nullptr;              // [num_experts, hidden, intermediate]
  const bfloat16* b2 = nullptr;              // optional [num_experts, hidden]
  const int32_t* expert_offsets = nullptr;   // device [num_experts + 1]
  bfloat16* y = nullptr;                     // out [num_rows, hidden]
  int64_t num_rows = 0;                      // TK
  int64_t hidden = 0;                        // d, multiple of 8
  int64_t intermediate = 0;                  // n, multiple of 8
  int64_t num_experts = 0;                   // E
};

// Input gradient of the up-projection (kernel 6): dX̃[r, :] = dH[r, :] · W1_e for every grouped
// row r of expert e, dH in grouped order. W1 is read as stored ([E, 2n, d], N-contiguous for
// this GEMM). The per-token sum over the K routed rows is a separate gather-and-sum kernel.
struct UpProjInputGradParams {
  const bfloat16* dh = nullptr;              // [num_rows, 2*intermediate], 16-byte aligned
  const bfloat16* w1 = nullptr;              // [num_experts, 2*intermediate, hidden]
  const int32_t* expert_offsets = nullptr;   // device [num_experts + 1]
  bfloat16* dx_rows = nullptr;               // out [num_rows, hidden]: dX̃ per routed row
  int64_t num_rows = 0;                      // TK
  int64_t hidden = 0;                        // d, multiple of 8
  int64_t intermediate = 0;                  // n, multiple of 8
  int64_t num_experts = 0;                   // E
};

// Host-only argument checks (no CUDA call); the launch functions run them first.
Status validate(const UpProjParams& params);
Status validate(const DownProjParams& params);
Status validate(const UpProjInputGradParams& params);

Status grouped_gemm_up_proj(const UpProjParams& params, cudaStream_t stream);
Status grouped_gemm_down_proj(const DownProjParams& params, cudaStream_t stream);
Status grouped_gemm_up_proj_input_grad(const UpProjInputGradParams& params, cudaStream_t stream);

// ---- Down-projection activation gradient (kernel 4, "dH"), SwiGLU ---------------------------
//   dA'[r, :] = dO[gather_idx[r], :] · W2_e          (W2 [E, d, n] read as stored)
//   grad_h   = dSwiGLU(H; s·dA')          [TK, 2n] grouped, (dgate, dup) interleaved like H
//   a_scaled = s · SwiGLU(H)              [TK, n]  grouped (the dW2 GEMM's operand)
//   ds_partial[scatter_idx[r], j] = Σ over N tile j of dA'·SwiGLU(H)   [TK, cols] fp32
// with s = scores[scatter_idx[r]]. dS is the row sum of ds_partial (plus <dO, b2_e> with bias):
// no atomics, so it is bitwise deterministic.
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

// ---- Weight gradients (kernels 5 and 7): per expert a reduction over its rows ("varlen K") ----
// Experts without rows get an all-zero gradient.
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
