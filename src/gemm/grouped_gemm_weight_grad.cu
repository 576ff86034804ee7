// src/gemm/grouped_gemm_weight_grad.cu — roles 5 and 7, the weight gradients dW2 and dW1: one
// varlen-K instantiation shared by both (only the operands differ), so the translation unit pays
// for the CuTe templates once.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "gemm/kernel_sm90_varlen_k.cuh"
#include "gemm/tile_config.h"
#include "gemm/validate_grouped_gemm.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {
namespace {

// 4 stages (192 KiB): the reduction runs over an expert's rows (hundreds to thousands), so the
// pipeline depth matters more than an output staging buffer here.
using Cfg = gemm::TileConfig128x256<4>;
// dW2 gathers its left operand (dO), dW1 its right one (x); the other comes by TMA.
using MainloopDW2 = gemm::MainloopSm90CpAsyncVarlenK<Cfg, /*kGatherLeft=*/true>;
using MainloopDW1 = gemm::MainloopSm90CpAsyncVarlenK<Cfg, /*kGatherLeft=*/false>;
using Element = MainloopDW2::Element;

Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status();
  return Status::error(StatusCode::cuda_error, std::string(what) + ": " + cudaGetErrorString(err));
}

// out[e] (m x n) = Σ_rows left[lrow]ᵀ ⊗ right[rrow]; no synchronisation, no allocation.
template <class Mainloop>
Status launch_weight_grad(const gemm::VarlenKKernelParams<Mainloop>& params, cudaStream_t stream) {
  auto kernel = gemm::grouped_gemm_varlen_k_sm90_kernel<Cfg, Mainloop>;
  const size_t smem_bytes = sizeof(typename Mainloop::SharedStorage) + 1024;
  int device = 0, sms = 0;
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device), "cudaGetDevice"));
  // The shared-memory opt-in is a per-device host attribute: set once, then skipped (also under
  // stream capture).
  static std::atomic<uint64_t> configured_devices{0};
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit == 0 || !(configured_devices.load(std::memory_order_acquire) & bit)) {
    SONICMOE_RETURN_IF_ERROR(cuda_status(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)),
        "cudaFuncSetAttribute(grouped_gemm_varlen_k_sm90_kernel)"));
    configured_devices.fetch_or(bit, std::memory_order_acq_rel);
  }
  SONICMOE_RETURN_IF_ERROR(
      cuda_status(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute"));
  const int64_t tiles = int64_t(params.num_experts) * ((params.mainloop.m + Cfg::kTileM - 1) / Cfg::kTileM) *
                        ((params.mainloop.n + Cfg::kTileN - 1) / Cfg::kTileN);
  const int grid = int(std::max<int64_t>(1, std::min<int64_t>(sms, tiles)));
  kernel<<<grid, Cfg::kThreads, smem_bytes, stream>>>(params);
  return cuda_status(cudaGetLastError(), "grouped_gemm_varlen_k_sm90_kernel launch");
}

}  // namespace

Status validate(const DownProjWeightGradParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.intermediate, "intermediate"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_tokens, "num_tokens", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_out, "grad_out", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  // Row-indexed arrays may be null when nothing is routed (the gradient is then all zeros).
  const auto require_rows = p.num_rows > 0 ? require_pointer : require_optional_pointer;
  SONICMOE_RETURN_IF_ERROR(require_rows(p.a_scaled, "a_scaled", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_w2, "grad_w2", 16));
  return Status();
}

Status validate(const UpProjWeightGradParams& p) {
  using namespace gemm::detail;
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.h_cols, "h_cols"));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_experts, "num_experts", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_tokens, "num_tokens", 1));
  SONICMOE_RETURN_IF_ERROR(require_count(p.num_rows, "num_rows", 0));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.x, "x", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  const auto require_rows = p.num_rows > 0 ? require_pointer : require_optional_pointer;
  SONICMOE_RETURN_IF_ERROR(require_rows(p.grad_h, "grad_h", 16));
  SONICMOE_RETURN_IF_ERROR(require_rows(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_w1, "grad_w1", 16));
  return Status();
}

// Nothing routed: every expert's gradient is zero (and there is no row tensor to describe).
static Status zero_gradient(bfloat16* out, int64_t count, cudaStream_t stream) {
  return cuda_status(cudaMemsetAsync(out, 0, size_t(count) * sizeof(bfloat16), stream), "cudaMemsetAsync");
}

Status grouped_gemm_down_proj_weight_grad(const DownProjWeightGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return zero_gradient(p.grad_w2, p.num_experts * p.hidden * p.intermediate, stream);
  const auto* a_scaled = reinterpret_cast<const Element*>(p.a_scaled);
  const gemm::VarlenKKernelParams<MainloopDW2> params{
      .mainloop = {.left = {reinterpret_cast<const Element*>(p.grad_out), p.hidden, p.gather_idx, p.num_tokens},
                   .right = {a_scaled, p.intermediate, nullptr, p.num_rows},
                   .m = int(p.hidden),
                   .n = int(p.intermediate),
                   .tma = MainloopDW2::make_tma_contig(a_scaled, int(p.intermediate), int(p.num_rows),
                                                      p.intermediate)},
      .out = reinterpret_cast<__nv_bfloat16*>(p.grad_w2),
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  return launch_weight_grad(params, stream);
}

Status grouped_gemm_up_proj_weight_grad(const UpProjWeightGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate(p));
  if (p.num_rows == 0) return zero_gradient(p.grad_w1, p.num_experts * p.h_cols * p.hidden, stream);
  const auto* grad_h = reinterpret_cast<const Element*>(p.grad_h);
  const gemm::VarlenKKernelParams<MainloopDW1> params{
      .mainloop = {.left = {grad_h, p.h_cols, nullptr, p.num_rows},
                   .right = {reinterpret_cast<const Element*>(p.x), p.hidden, p.gather_idx, p.num_tokens},
                   .m = int(p.h_cols),
                   .n = int(p.hidden),
                   .tma = MainloopDW1::make_tma_contig(grad_h, int(p.h_cols), int(p.num_rows),
                                                      p.h_cols)},
      .out = reinterpret_cast<__nv_bfloat16*>(p.grad_w1),
      .expert_offsets = p.expert_offsets,
      .num_experts = int(p.num_experts),
      .num_rows = int(p.num_rows)};
  return launch_weight_grad(params, stream);
}

}  // namespace sonicmoe
