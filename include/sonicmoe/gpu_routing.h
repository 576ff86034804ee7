// sonicmoe/gpu_routing.h — routing on the GPU (DESIGN.md §4, kernel R): router logits, top-K
// softmax, token rounding, the routing metadata of a list, and a device-side check of a caller's
// general routing list.
//
// Same parameter structs as the CPU reference (sonicmoe/routing.h), with device pointers. Every
// call is stream-ordered and needs no host synchronisation, so it can be captured in a CUDA
// graph. Host-side argument checks (sizes, null and misaligned pointers) run first and return a
// Status naming the argument; the contents of device arrays are checked by check_routing_list or
// clamped by the kernels so that bad values never read or write out of bounds.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/routing.h"
#include "sonicmoe/status.h"

namespace sonicmoe {

// Router logits = x · router_weightᵀ in fp32 (cuBLAS, bf16 inputs, fp32 accumulation).
// The cuBLAS handle is created once per thread and device; cuBLAS's workspace comes from the
// caller (router_logits_workspace_bytes) so the call is safe inside graph capture.
int64_t cublas_workspace_bytes();
Status router_logits(const RouterLogitsParams& params, void* cublas_workspace, int64_t workspace_bytes,
                     cudaStream_t stream);

// Top-K softmax: per token the K largest logits (ties: lower expert index first), fp32 softmax
// over those K; entries t*K + k by descending score. num_experts <= 1024, top_k <= 32.
Status route_top_k(const TopKParams& params, cudaStream_t stream);

// Token rounding (DESIGN.md §3) with the CPU reference's exact rules (ties, the drop when too
// few tokens exist to pad). params.num_routed is a DEVICE pointer: the list length stays on the
// GPU. Arrays of params hold params.capacity entries (token_rounding_capacity()).
int64_t token_rounding_workspace_bytes(int64_t num_tokens, int64_t num_experts, int64_t top_k);
Status route_token_rounding(const TokenRoundingParams& params, void* workspace, int64_t workspace_bytes,
                            cudaStream_t stream);

// Routing metadata (expert_offsets, gather/scatter/reverse indices) of a list in flat order,
// grouped order = by expert, then flat index (== token, slot): deterministic, no atomics on the
// result. params.routing.num_routed is the capacity of the arrays; `device_num_routed`, when not
// null, is the list's actual length on the device (token rounding) and must be <= it.
// expert_offsets[E] == the actual length afterwards. Entries past it are left untouched.
int64_t routing_metadata_workspace_bytes(int64_t capacity, int64_t num_experts);
Status build_routing_metadata(const RoutingMetadataParams& params, const int64_t* device_num_routed,
                              void* workspace, int64_t workspace_bytes, cudaStream_t stream);

// The rules of RoutingList checked on the device. Writes a RoutingListCheck to `result`
// (device memory): code 0 when the list is valid, otherwise the first broken rule and the
// lowest entry index that breaks a rule.
enum class RoutingListError : int32_t {
  ok = 0,
  token_out_of_range = 1,   // token_idx[i] outside [0, num_tokens)
  tokens_not_sorted = 2,    // token_idx[i] < token_idx[i-1]
  expert_out_of_range = 3,  // expert_idx[i] outside [0, num_experts)
  duplicate_expert = 4,     // two entries of one token name the same expert
  score_not_finite = 5,     // scores[i] is NaN or infinite
};
const char* to_string(RoutingListError e);
struct RoutingListCheck {
  int32_t code = 0;   // a RoutingListError
  int32_t entry = -1; // the lowest offending entry, -1 when valid
};
Status check_routing_list(const RoutingList& routing, int64_t num_tokens, int64_t num_experts,
                          RoutingListCheck* result, cudaStream_t stream);
// The Status a host that copied a RoutingListCheck back reports ("invalid argument '<name>': ...").
Status routing_list_status(const RoutingListCheck& check, const char* name);

}  // namespace sonicmoe
