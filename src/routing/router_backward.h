// src/routing/router_backward.h — the router's backward on the GPU: score gradients dS (one per
// routed entry, flat order) -> logit gradients dlogits [T, E], the input of the two router GEMMs
// (dWr = dlogitsᵀ·x and dx += dlogits·Wr, cuBLAS, in src/moe/).
//
// Top-K routing: scores = softmax over the token's K chosen logits, so
//   dlogit[e_k] = s_k (g_k − Σ_j s_j g_j),  zero for experts outside the top-K;
// the saved fp32 scores suffice (no logits needed).
// Token rounding: entries inside the token's top-K set use that softmax (entries dropped by the
// rounding carry no gradient but still take part in the normalisation, so the top-K set is
// recomputed from the logits); padded entries (outside the top-K set) carry the full softmax
// probability p_e, whose backward is dlogit += p ⊙ (g_pad − Σ_e p_e g_pad_e) over all E.
// Same math as reference::detail::router_scores_backward.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe::routing {

struct RouterBackwardParams {
  int64_t num_tokens = 0;   // T
  int64_t num_experts = 0;  // E
  int64_t top_k = 0;        // K of the router
  RoutingKind kind = RoutingKind::top_k;  // top_k or token_rounding
  int64_t capacity = 0;     // length of the flat arrays below (top_k: >= T*K)
  const int32_t* num_routed = nullptr;   // device scalar: the list's length (expert_offsets + E);
                                         //   token_rounding only (clamped to [0, capacity])
  const int32_t* token_idx = nullptr;    // [capacity] flat order (sorted by token); token_rounding
                                         //   only (top_k entries are t*K + k)
  const int32_t* expert_idx = nullptr;   // [capacity]
  const float* scores = nullptr;         // [capacity] the forward's scores; top_k only
  const float* grad_scores = nullptr;    // [capacity] dS
  const float* logits = nullptr;         // [T, E] fp32, token_rounding only (recomputed x·Wrᵀ)
  bfloat16* grad_logits = nullptr;       // [T, E] out, every element written
};
// Limits: top_k <= 32; token_rounding also num_experts <= 1024 (one warp holds a row of logits).
// Host checks return invalid_argument naming the field; kind == general is refused.

Status router_backward(const RouterBackwardParams& params, cudaStream_t stream);

}  // namespace sonicmoe::routing
