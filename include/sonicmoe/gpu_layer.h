// sonicmoe/gpu_layer.h — the MoE layer on a Hopper GPU: forward and backward (DESIGN.md §4)
// with the SonicMoE memory contract (DESIGN.md §3).
//
// The parameter structs are those of the CPU reference (sonicmoe/moe.h) with device pointers.
// The GPU layer takes bfloat16 tensors and the SwiGLU activation. Temporary tensors (logits, A,
// Y in the forward; dH, s·A, dX̃, partial dS, dlogits in the backward) live in a workspace the
// caller allocates: ask for its size first, then pass it to every call. Nothing is allocated and
// nothing synchronises the host (one exception: the check of a general routing list, see
// ForwardParams::check_routing_input), so forward and backward can be captured in a CUDA graph.
//
// Typical use:
//   const int64_t rows = routed_capacity(config, 0);          // T*K for top-K routing
//   SavedState saved = ...;                                   // arrays for `rows` routed rows
//   std::vector<char> ws(...) -> cudaMalloc(forward_workspace_bytes(config, rows, false))
//   moe_forward(fwd, ws, ws_bytes, stream);                   // fills out and saved
//   moe_backward(bwd, ws, backward_workspace_bytes(config, rows), stream);
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/moe.h"
#include "sonicmoe/status.h"

namespace sonicmoe {

// Routed rows the layer must hold room for: T*K (top-K), token_rounding_capacity(T, E, K,
// tile_m) (token rounding, the data-dependent count stays on the GPU), or the caller's list
// length (general routing: pass it as general_num_routed).
int64_t routed_capacity(const LayerConfig& config, int64_t general_num_routed);

// Workspace bytes of one call. capacity = routed_capacity(...). An inference forward also keeps
// its routing arrays and H in the workspace.
int64_t forward_workspace_bytes(const LayerConfig& config, int64_t capacity, bool inference);
int64_t backward_workspace_bytes(const LayerConfig& config, int64_t capacity);

// Forward: routes (top-K or token rounding from x·Wrᵀ, or the caller's general list), builds the
// routing metadata, runs the up-projection (gather + SwiGLU, writes H and A), the
// down-projection (Y) and the score-weighted aggregation into out. Fills params.saved unless
// params.inference. The number of routed rows stays on the GPU (saved.metadata.expert_offsets[E]).
Status moe_forward(const ForwardParams& params, void* workspace, int64_t workspace_bytes, cudaStream_t stream);

// Backward from the saved state: dH kernel (dA' = dO·W2, dS = <dA', A>, dH, s·A), dW2, dX̃, dW1,
// the aggregation of dX̃ into grad_x, bias gradients, and the router backward (dlogits ->
// grad_router_weight and the router term of grad_x, cuBLAS) for top-K and token rounding.
// grad_scores (flat order) receives dS when given; it is required for general routing.
Status moe_backward(const BackwardParams& params, void* workspace, int64_t workspace_bytes, cudaStream_t stream);

}  // namespace sonicmoe
