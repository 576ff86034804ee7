// Shared pieces of the CPU reference: conversion between stored element types and double,
// activations and their derivatives, and routing on double logits.
//
// The layer's reference keeps logits and scores in double internally so that finite-difference
// checks in float64 see a smooth function; what it stores for the caller (logits, scores) is
// rounded to fp32 as the API says.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "sonicmoe/routing.h"
#include "sonicmoe/types.h"

namespace sonicmoe::reference::detail {

// ---- element conversion ----------------------------------------------------------------------
inline double round_to(DType t, double v) {
  switch (t) {
    case DType::bfloat16: return double(float(bfloat16(float(v))));
    case DType::float32: return double(float(v));
    case DType::float64: return v;
  }
  return v;
}

inline double load_one(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::bfloat16: return double(float(static_cast<const bfloat16*>(p)[i]));
    case DType::float32: return double(static_cast<const float*>(p)[i]);
    case DType::float64: return static_cast<const double*>(p)[i];
  }
  return 0.0;
}

inline void store_one(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::bfloat16: static_cast<bfloat16*>(p)[i] = bfloat16(float(v)); break;
    case DType::float32: static_cast<float*>(p)[i] = float(v); break;
    case DType::float64: static_cast<double*>(p)[i] = v; break;
  }
}

inline std::vector<double> load(const void* p, DType t, int64_t count) {
  std::vector<double> out(static_cast<size_t>(count > 0 ? count : 0));
  for (int64_t i = 0; i < count; ++i) out[size_t(i)] = load_one(p, t, i);
  return out;
}

inline void store(void* p, DType t, const std::vector<double>& v) {
  for (size_t i = 0; i < v.size(); ++i) store_one(p, t, int64_t(i), v[i]);
}

inline void round_all(std::vector<double>& v, DType t, bool enabled) {
  if (!enabled) return;
  for (double& x : v) x = round_to(t, x);
}

// ---- activations -----------------------------------------------------------------------------
// act: one row of H (h_cols values) -> one row of A (n values).
void activation_forward(Activation act, const double* h, double* a, int64_t n);
// dact: given a row of H and dA (n values), the row of dH (h_cols values).
void activation_backward(Activation act, const double* h, const double* da, double* dh, int64_t n);

// ---- routing on double logits ------------------------------------------------------------------
// logits [T, E] = x · Wrᵀ in double.
std::vector<double> router_logits_double(const void* x, const void* router_weight, DType dtype, int64_t num_tokens,
                                         int64_t hidden, int64_t num_experts);

// One routed entry in flat order.
struct RouteEntry {
  int32_t token;
  int32_t expert;
  double score;
};

// Top-K on logits [T, E]: per token the K largest (ties: lower expert first), scores = softmax
// over those K. Entries t*K + k, by descending score.
std::vector<RouteEntry> top_k_entries(const double* logits, int64_t num_tokens, int64_t num_experts, int64_t top_k);

// Token rounding (DESIGN.md §3) on logits [T, E]; entries by token, then expert.
std::vector<RouteEntry> token_rounding_entries(const double* logits, int64_t num_tokens, int64_t num_experts,
                                               int64_t top_k, const TokenRoundingOptions& options);

// Router backward: dlogits [T, E] from the gradient of each entry's score, for scores produced by
// top_k_entries / token_rounding_entries on these logits (the discrete choice held fixed).
std::vector<double> router_scores_backward(const double* logits, int64_t num_tokens, int64_t num_experts,
                                           int64_t top_k, const int32_t* token_idx,
                                           const int32_t* expert_idx, const double* grad_scores,
                                           int64_t num_routed);

// The layer's routing with double scores: top-K or token rounding on x·Wrᵀ (logits kept), or
// the caller's general list (scores as given, no logits).
struct LayerRouting {
  std::vector<double> logits;  // [T, E]; empty for general routing
  std::vector<RouteEntry> entries;
};
LayerRouting route_layer(const LayerConfig& config, const void* x, const void* router_weight,
                         const RoutingList& general_input);

}  // namespace sonicmoe::reference::detail
