// src/combine/combine.h — the gather-and-sum kernels around the grouped GEMMs (DESIGN.md §4,
// kernels 3 and 8, the dS finish and the bias gradients). Each is a deterministic reduction in a
// fixed order with fp32 accumulation; none uses atomics.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe::combine {

// out[t, :] = Σ over the entries i of token t, in flat order, of w_i · rows[reverse_idx[i], :]
// with w_i = scores[i] (or 1 when scores is null). Forward: rows = Y, scores = s -> o.
// Backward: rows = dX̃, scores = null -> dx (expert part). Tokens with no entry get zeros.
// Entries of token t: top_k > 0: t*K .. t*K+K-1 (top-K routing); top_k == 0: the range of t in
// the sorted token_idx[0 .. *num_routed) (general and token-rounding routing).
struct CombineRowsParams {
  int64_t num_tokens = 0;   // T
  int64_t hidden = 0;       // d, multiple of 8
  int64_t capacity = 0;     // length of the flat arrays and rows of `rows`
  int64_t top_k = 0;        // > 0 for top-K routing, 0 otherwise
  const int32_t* num_routed = nullptr;   // device scalar (expert_offsets + E)
  const int32_t* token_idx = nullptr;    // [capacity] flat, sorted (read when top_k == 0)
  const int32_t* reverse_idx = nullptr;  // [capacity] flat slot -> grouped row
  const float* scores = nullptr;         // optional [capacity] flat
  const bfloat16* rows = nullptr;        // [capacity, hidden] grouped order, 16-byte aligned
  bfloat16* out = nullptr;               // [T, hidden] out
};
Status combine_rows(const CombineRowsParams& params, cudaStream_t stream);

// grad_scores[i] = Σ_j partial[i, j]  (+ <grad_out[token_idx[i]], b2[expert_idx[i]]> with bias),
// for i < *num_routed; fp32, j in increasing order. `partial` is the dH kernel's per-N-tile dS.
struct ScoreGradParams {
  int64_t capacity = 0;
  int64_t partial_cols = 0;              // down_proj_act_grad_partial_cols(n)
  int64_t hidden = 0;                    // d (bias term only)
  int64_t num_tokens = 0;                // T (bias term only: bounds of token_idx)
  int64_t num_experts = 0;               // E (bias term only: bounds of expert_idx)
  const int32_t* num_routed = nullptr;   // device scalar
  const float* partial = nullptr;        // [capacity, partial_cols] flat order
  const int32_t* token_idx = nullptr;    // [capacity] (bias term only)
  const int32_t* expert_idx = nullptr;   // [capacity] (bias term only)
  const bfloat16* grad_out = nullptr;    // [T, d] (bias term only)
  const bfloat16* b2 = nullptr;          // optional [E, d]: adds the bias term
  float* grad_scores = nullptr;          // [capacity] out
};
Status finish_score_grad(const ScoreGradParams& params, cudaStream_t stream);

// Per-expert column sums over the expert's grouped rows (bias gradients):
//   out[e, c] = Σ_{r in expert e, increasing} w_r · src[g(r), c]
// with g(r) = gather_idx[r] (or r when null) and w_r = row_scale[scatter_idx[r]] (or 1 when
// row_scale is null). db2 = sums of s·dO[gather]; db1 = sums of dH. Experts without rows get 0.
struct ExpertColumnSumParams {
  int64_t num_experts = 0;
  int64_t cols = 0;                      // multiple of 8
  int64_t src_rows = 0;                  // rows of src (bounds of g(r))
  int64_t capacity = 0;                  // bound of the grouped row index
  const int32_t* expert_offsets = nullptr;  // device [E+1]
  const int32_t* gather_idx = nullptr;   // optional [capacity]
  const int32_t* scatter_idx = nullptr;  // [capacity], read when row_scale is set
  const float* row_scale = nullptr;      // optional [capacity] flat order
  const bfloat16* src = nullptr;         // [src_rows, cols]
  bfloat16* out = nullptr;               // [E, cols] out
};
Status expert_column_sums(const ExpertColumnSumParams& params, cudaStream_t stream);

}  // namespace sonicmoe::combine
