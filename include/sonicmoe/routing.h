// sonicmoe/routing.h — routing: which token goes to which expert with which weight, and the
// index arrays that move rows between token order and grouped (expert) order.
//
// Two orders appear everywhere:
//   flat order     the routing list itself, sorted by token. For top-K routing entry t*K + k is
//                  slot k of token t (slots by descending score). A "flat slot" is an entry index.
//   grouped order  rows sorted by expert, then token (then slot): the order of the rows of H, A,
//                  Y, dH, ... so that each expert's rows are contiguous for the grouped GEMMs.
#pragma once

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe {

// A routing list in flat order: entry i sends token token_idx[i] to expert expert_idx[i], whose
// output is weighted by scores[i]. Rules (checked by validate_routing_list):
//   0 <= token_idx[i] < T, non-decreasing in i;  0 <= expert_idx[i] < E;
//   the experts of one token are distinct;  scores are finite.
// A token may have any number of entries, zero included (token rounding and general routing).
struct RoutingList {
  int64_t num_routed = 0;  // TK
  const int32_t* token_idx = nullptr;
  const int32_t* expert_idx = nullptr;
  const float* scores = nullptr;  // fp32
};

// Index arrays between flat and grouped order (all int32; row offsets into large tensors are
// formed in 64 bits by their users).
struct RoutingMetadata {
  int32_t* expert_offsets = nullptr;  // [E+1] exclusive prefix sum of per-expert counts
  int32_t* gather_idx = nullptr;      // [TK] grouped row -> token
  int32_t* scatter_idx = nullptr;     // [TK] grouped row -> flat slot
  int32_t* reverse_idx = nullptr;     // [TK] flat slot -> grouped row
};

// Router logits = x · router_weightᵀ, fp32.
struct RouterLogitsParams {
  int64_t num_tokens = 0;   // T
  int64_t hidden = 0;       // d
  int64_t num_experts = 0;  // E
  DType dtype = DType::bfloat16;
  const void* x = nullptr;              // [T, d]
  const void* router_weight = nullptr;  // [E, d]
  float* logits = nullptr;              // [T, E] out
};

// Top-K token choice: per token the K largest logits (ties: lower expert index first), scores =
// softmax over those K logits in fp32. Writes T*K entries, slots by descending score.
struct TopKParams {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  const float* logits = nullptr;  // [T, E]
  int32_t* token_idx = nullptr;   // [T*K] out
  int32_t* expert_idx = nullptr;  // [T*K] out
  float* scores = nullptr;        // [T*K] out
};

// Token rounding (DESIGN.md §3): top-K, then each expert's count rounded to a multiple of
// options.tile_m by dropping its lowest-score top-K tokens or padding with its highest-probability
// unchosen tokens (score = that full-softmax probability). Output is a general routing list in
// flat order (by token, then expert index); its length is data dependent and written to
// *num_routed. The output arrays must hold token_rounding_capacity(...) entries.
struct TokenRoundingParams {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  TokenRoundingOptions options;
  const float* logits = nullptr;  // [T, E]
  int64_t capacity = 0;           // length of the output arrays
  int32_t* token_idx = nullptr;   // [capacity] out
  int32_t* expert_idx = nullptr;  // [capacity] out
  float* scores = nullptr;        // [capacity] out
  int64_t* num_routed = nullptr;  // out: entries written
};

// Most entries token rounding can produce: min(T*K + E*(tile_m-1), T*E).
int64_t token_rounding_capacity(int64_t num_tokens, int64_t num_experts, int64_t top_k, int64_t tile_m);

// Counts, offsets and index arrays of a routing list.
struct RoutingMetadataParams {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  RoutingList routing;
  RoutingMetadata metadata;  // out
};

// Checks a routing list against the rules above (O(TK) host work; host pointers).
Status validate_routing_list(const RoutingList& routing, int64_t num_tokens, int64_t num_experts,
                             const char* name = "routing");

}  // namespace sonicmoe
