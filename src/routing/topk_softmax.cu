// src/routing/topk_softmax.cu — top-K token-choice routing on the GPU (kernel R, DESIGN.md §4):
// router logits [T, E] fp32 -> the flat routing list (token_idx, expert_idx, scores) [T*K].
//
// One warp per token (routing_device.cuh): K rounds of a warp argmax over the row held in
// registers, then the softmax over the K chosen logits. The softmax is evaluated in double with
// the reference's order of additions and rounded once to fp32, so scores equal the CPU
// reference's float(double) up to the last bit of exp(); K <= 32 exps in double per token are
// negligible next to reading the row. Deterministic: no atomics, a fixed order everywhere.
//
// Non-finite logits (the reference rejects them; a GPU call cannot report without a host sync):
// NaN ranks below every number, ±inf rank as themselves, indices stay in range; the scores of a
// token whose chosen logits are not all finite are NaN. No out-of-bounds access in either case.
#include <cstdint>
#include <string>

#include "core/device_checks.h"
#include "core/validate.h"
#include "routing/routing_device.cuh"
#include "sonicmoe/gpu_routing.h"

namespace sonicmoe {
namespace {

using detail::concat;
using namespace routing::device;

// 4 warps per block: 128 threads. Registers are the limit at E = 1024 (64 for the keys), and
// blocks this small keep the tail of the last wave short.
constexpr int kTopKWarpsPerBlock = 4;

template <int kItems>
__global__ void __launch_bounds__(kTopKWarpsPerBlock* kWarpSize)
    top_k_softmax_kernel(const float* __restrict__ logits, int64_t num_tokens, int num_experts, int top_k,
                         int32_t* __restrict__ token_idx, int32_t* __restrict__ expert_idx,
                         float* __restrict__ scores) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t t = int64_t(blockIdx.x) * kTopKWarpsPerBlock + int64_t(threadIdx.x) / kWarpSize;
  if (t >= num_tokens) return;  // uniform over the warp
  int expert;
  float logit;
  uint8_t rank[kItems];
  warp_top_k<kItems>(logits + t * num_experts, num_experts, top_k, lane, expert, logit, rank);
  const double score = warp_top_k_softmax(logit, top_k, lane);
  if (lane < top_k) {
    const int64_t i = t * top_k + lane;
    token_idx[i] = int32_t(t);
    expert_idx[i] = expert;
    scores[i] = float(score);
  }
}

using detail::cuda_status;

Status validate_gpu_top_k_params(const TopKParams& p) {
  SONICMOE_RETURN_IF_ERROR(detail::validate_top_k_params(p));
  SONICMOE_RETURN_IF_ERROR(check_router_limits(p.num_experts, p.top_k, "the GPU top-K"));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.logits, "logits", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.token_idx, "token_idx", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.expert_idx, "expert_idx", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.scores, "scores", 4));
  return {};
}

template <int kItems>
void launch_top_k(const TopKParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.num_tokens + kTopKWarpsPerBlock - 1) / kTopKWarpsPerBlock;
  top_k_softmax_kernel<kItems><<<dim3(unsigned(blocks)), kTopKWarpsPerBlock * kWarpSize, 0, stream>>>(
      p.logits, p.num_tokens, int(p.num_experts), int(p.top_k), p.token_idx, p.expert_idx, p.scores);
}

}  // namespace

Status route_top_k(const TopKParams& params, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate_gpu_top_k_params(params));
  switch (items_per_lane(params.num_experts)) {
    case 1: launch_top_k<1>(params, stream); break;
    case 2: launch_top_k<2>(params, stream); break;
    case 4: launch_top_k<4>(params, stream); break;
    case 8: launch_top_k<8>(params, stream); break;
    case 16: launch_top_k<16>(params, stream); break;
    default: launch_top_k<32>(params, stream); break;
  }
  return cuda_status(cudaGetLastError(), "route_top_k kernel launch");
}

}  // namespace sonicmoe
