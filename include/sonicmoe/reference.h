// sonicmoe/reference.h — the CPU reference of the whole MoE layer: the ground truth every GPU
// result is checked against.
//
// Same parameter structs as the GPU entry points, host pointers, any DType (bf16, fp32, fp64).
// Every sum is accumulated in double; values are rounded only where the layer stores a tensor
// (H, out, the gradients). Slow on purpose: O(TK·d·n) loops with no blocking.
#pragma once

#include "sonicmoe/moe.h"
#include "sonicmoe/routing.h"
#include "sonicmoe/status.h"

namespace sonicmoe::reference {

struct Options {
  // Round the tensors a plain framework implementation would materialise (A, Y, dA', dH, dX̃)
  // to config.dtype. Off: the ground truth. On: "a straightforward bf16 implementation", the
  // yardstick a kernel's error is compared with (DESIGN.md §6).
  bool round_transients = false;
};

// Routing ---------------------------------------------------------------------------------------
Status router_logits(const RouterLogitsParams& params);
Status route_top_k(const TopKParams& params);
Status route_token_rounding(const TokenRoundingParams& params);
Status build_routing_metadata(const RoutingMetadataParams& params);

// Layer -----------------------------------------------------------------------------------------
// Routes (top-K, token rounding, or the caller's validated list), builds the metadata, computes
// H and out, and fills params.saved.
Status moe_forward(const ForwardParams& params, const Options& options = {});

// The backward as the GPU computes it: A recomputed from the saved H, dS = <dA', A>
// (+ <dO, b2_e> with bias), dH = dact(H, s·dA'), weight gradients from dO, s·A, dH and x.
Status moe_backward(const BackwardParams& params, const Options& options = {});

// An independent backward used only to check moe_backward: a loop over tokens and their
// entries that recomputes H from x (ignores the saved H and the metadata), takes dS = <dO, Y>,
// and differentiates the router scores through an explicit Jacobian.
Status moe_backward_naive(const BackwardParams& params);

}  // namespace sonicmoe::reference
