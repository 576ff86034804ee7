// sonicmoe/moe.h — the MoE layer's forward and backward parameters and the saved state.
//
// Layouts (row-major, elements of LayerConfig::dtype unless said; DESIGN.md §1):
//   x              [T, d]
//   router_weight  [E, d]                (top_k and token_rounding routing)
//   w1             [E, h_cols, d]        h_cols = 2n for SwiGLU with rows interleaved:
//                                        row 2j is gate j, row 2j+1 is up j; n otherwise
//   b1             [E, h_cols]           (has_bias)
//   w2             [E, d, n]
//   b2             [E, d]                (has_bias)
//   H              [TK, h_cols]          pre-activation, grouped order
//   out, grad_out  [T, d]
//   scores         [TK] fp32, flat order
//
// Math: H = x[gather]·W1_eᵀ (+b1_e); A = act(H); Y = A·W2_eᵀ (+b2_e); out[t] = Σ s·Y[rows of t].
#pragma once

#include <cstdint>

#include "sonicmoe/routing.h"
#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe {

struct ExpertWeights {
  const void* w1 = nullptr;  // [E, h_cols, d]
  const void* b1 = nullptr;  // [E, h_cols] or null without bias
  const void* w2 = nullptr;  // [E, d, n]
  const void* b2 = nullptr;  // [E, d] or null without bias
};

// What the forward keeps for the backward — and nothing else (the memory contract, DESIGN.md §3):
// x itself (borrowed from the caller, never copied), H, the fp32 scores and the int32 routing
// arrays: 2·T·d + 2·TK·h_cols bytes for bf16, plus 4·(4·TK + E + 1) bytes of routing.
// The forward fills every array; the caller owns the memory, sized for `capacity` entries.
// The number of routed rows TK is metadata.expert_offsets[E], written by the forward where the
// backend keeps its data (on the GPU it stays there: no host synchronisation). Entries past TK
// are unused.
struct SavedState {
  int64_t capacity = 0;           // length of the [TK] arrays below (rows of h)
  int32_t* token_idx = nullptr;   // [capacity] flat order
  int32_t* expert_idx = nullptr;  // [capacity] flat order
  float* scores = nullptr;        // [capacity] flat order
  RoutingMetadata metadata;       // expert_offsets [E+1]; gather/scatter/reverse [capacity]
  void* h = nullptr;              // [capacity, h_cols] grouped order
};

// Cached bytes of the saved state for num_routed routed rows, x included (it must outlive the
// forward too).
int64_t saved_state_bytes(const LayerConfig& config, int64_t num_routed);

struct ForwardParams {
  LayerConfig config;
  const void* x = nullptr;              // [T, d]
  const void* router_weight = nullptr;  // [E, d]; unused for general routing
  ExpertWeights experts;
  RoutingList routing_input;            // general routing only: the caller's list (validated)
  void* out = nullptr;                  // [T, d] out
  SavedState saved;                     // out: routing, metadata and H for the backward
  // Inference: nothing is kept for a backward and `saved` must be left empty (capacity 0, null
  // pointers); routing and H live in the workspace for the duration of the call (GPU layer).
  bool inference = false;
  // General routing on the GPU: check the list's contents (the rules of RoutingList) before
  // using it and report a broken rule as a Status. This reads 8 bytes back and so synchronises
  // the stream once: turn it off inside CUDA-graph capture (a bad list then stays memory-safe but
  // gives meaningless results).
  bool check_routing_input = true;
};

struct BackwardParams {
  LayerConfig config;
  const void* x = nullptr;              // the forward's x
  const void* router_weight = nullptr;  // [E, d]; unused for general routing
  ExpertWeights experts;
  SavedState saved;                     // as the forward left it (read only)
  const void* grad_out = nullptr;       // [T, d]
  // Outputs. grad_x includes the router term for top_k and token_rounding routing; for general
  // routing the scores belong to the caller, who gets their gradient in grad_scores.
  void* grad_x = nullptr;              // [T, d]
  void* grad_w1 = nullptr;             // [E, h_cols, d]
  void* grad_b1 = nullptr;             // [E, h_cols] (has_bias)
  void* grad_w2 = nullptr;             // [E, d, n]
  void* grad_b2 = nullptr;             // [E, d] (has_bias)
  void* grad_router_weight = nullptr;  // [E, d] (top_k, token_rounding)
  float* grad_scores = nullptr;        // [TK] flat order: dS = <dO_t, Y_row>; required for
                                       // general routing, optional otherwise
};

// Shape and option rules shared by every backend (sizes positive, K <= E, d and n multiples of
// 8, tile_m positive, dtype supported by the backend ...).
Status validate_layer_config(const LayerConfig& config);

}  // namespace sonicmoe
