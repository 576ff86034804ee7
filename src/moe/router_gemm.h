// src/moe/router_gemm.h — the router's three small GEMMs through cuBLAS (DESIGN.md allows it:
// they are ~1% of the layer's FLOPs): logits = x·Wrᵀ (public, sonicmoe/gpu_routing.h), and in
// the backward dWr = dlogitsᵀ·x and dx += dlogits·Wr.
//
// One cuBLAS handle per (thread, device), created on first use; its stream and workspace are set
// at every call from the caller's arguments, so the calls are safe inside CUDA-graph capture
// (cuBLAS then uses only the given workspace) and deterministic (atomics stay disabled).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "sonicmoe/status.h"
#include "sonicmoe/types.h"

namespace sonicmoe::moe {

struct CublasWorkspace {
  void* ptr = nullptr;
  int64_t bytes = 0;
};

// grad_router_weight [E, d] = grad_logitsᵀ [E, T] · x [T, d]   (bf16 out, fp32 accumulation)
Status router_weight_grad(const bfloat16* grad_logits, const bfloat16* x, bfloat16* grad_router_weight,
                          int64_t num_tokens, int64_t hidden, int64_t num_experts, CublasWorkspace ws,
                          cudaStream_t stream);

// grad_x [T, d] += grad_logits [T, E] · router_weight [E, d]   (read-modify-write of bf16 grad_x,
// fp32 accumulation, one rounding)
Status router_input_grad_accumulate(const bfloat16* grad_logits, const bfloat16* router_weight, bfloat16* grad_x,
                                    int64_t num_tokens, int64_t hidden, int64_t num_experts, CublasWorkspace ws,
                                    cudaStream_t stream);

}  // namespace sonicmoe::moe
