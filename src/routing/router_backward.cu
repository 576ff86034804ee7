// src/routing/router_backward.cu — the router's backward on the GPU (router_backward.h): score
// gradients dS in flat order -> logit gradients dlogits [T, E] bf16, every element written.
// Same math as reference::detail::router_scores_backward; one warp per token, no atomics, sums in
// a fixed order, so the result is bitwise reproducible.
//
// top_k: entries t*K .. t*K+K-1 hold the token's K experts with their saved fp32 scores s_k;
//   d_k = s_k (g_k − Σ_j s_j g_j) in double (rank order), written to its expert, zeros elsewhere.
//   The row is zero-filled by the warp first, then each expert's value is written by the lane of
//   its first slot (repeated experts, which a valid list never has, are summed), so the stores
//   never race.
// token_rounding: the token's entries are its range of token_idx[0 .. *num_routed) (binary
//   search, the list is token-sorted). The top-K set and its softmax are recomputed from the fp32
//   logits exactly as the forward did (routing_device.cuh); entries inside the set feed the
//   renormalised-softmax term (dropped top-K experts carry no gradient but stay in the
//   normalisation), entries outside it (padding) carry the full-softmax probability p and feed
//   p ⊙ (g_pad − Σ_e p_e g_pad_e) over all E. Accumulation in double, entries in list order.
//
// Contents of the device arrays are not trusted for memory safety: experts outside [0, E) are
// ignored, *num_routed is clamped to [0, capacity], an unsorted token_idx gives wrong (but
// in-bounds) results.
#include "routing/router_backward.h"

#include <cuda_bf16.h>

#include <cstdint>
#include <limits>
#include <string>

#include "core/device_checks.h"
#include "core/validate.h"
#include "routing/routing_device.cuh"

namespace sonicmoe::routing {
namespace {

using detail::concat;
using namespace device;

constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ void store_bf16(bfloat16* out, int64_t i, double value) {
  reinterpret_cast<uint16_t*>(out)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(float(value)));
}

// ---- top-K routing: saved scores suffice ----------------------------------------------------------
__global__ void __launch_bounds__(kWarpsPerBlock* kWarpSize)
    router_backward_top_k_kernel(int64_t num_tokens, int num_experts, int top_k,
                                 const int32_t* __restrict__ expert_idx, const float* __restrict__ scores,
                                 const float* __restrict__ grad_scores, bfloat16* __restrict__ grad_logits) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + int64_t(threadIdx.x) / kWarpSize;
  if (t >= num_tokens) return;  // uniform over the warp
  int expert = -1;
  double s = 0.0, g = 0.0;
  if (lane < top_k) {
    const int64_t i = t * top_k + lane;
    expert = expert_idx[i];
    s = double(scores[i]);
    g = double(grad_scores[i]);
  }
  double weighted = 0.0;  // Σ_j s_j g_j in slot order
  for (int k = 0; k < top_k; ++k) weighted += __shfl_sync(kFullMask, s * g, k);
  const double d = s * (g - weighted);

  // Lane k sums the slots naming its expert and writes only if it is the first such slot.
  double value = 0.0;
  bool first = true;
  for (int k = 0; k < top_k; ++k) {
    const int other = __shfl_sync(kFullMask, expert, k);
    const double other_d = __shfl_sync(kFullMask, d, k);
    if (other == expert) {
      value += other_d;
      if (k < lane) first = false;
    }
  }
  bfloat16* row = grad_logits + t * num_experts;
  for (int e = lane; e < num_experts; e += kWarpSize) store_bf16(row, e, 0.0);
  __syncwarp();  // orders the zero fill before the scattered values (same warp, same addresses)
  if (lane < top_k && first && expert >= 0 && expert < num_experts) store_bf16(row, expert, value);
}

// ---- token rounding: top-K set recomputed from the logits -----------------------------------------
__device__ __forceinline__ int64_t lower_bound(const int32_t* __restrict__ values, int64_t count, int64_t key) {
  int64_t lo = 0, hi = count;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (int64_t(values[mid]) < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

template <int kItems>
__global__ void __launch_bounds__(kWarpsPerBlock* kWarpSize)
    router_backward_rounding_kernel(int64_t num_tokens, int num_experts, int top_k, int64_t capacity,
                                    const int32_t* __restrict__ num_routed, const int32_t* __restrict__ token_idx,
                                    const int32_t* __restrict__ expert_idx, const float* __restrict__ grad_scores,
                                    const float* __restrict__ logits, bfloat16* __restrict__ grad_logits) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + int64_t(threadIdx.x) / kWarpSize;
  if (t >= num_tokens) return;  // uniform over the warp
  const float* row = logits + t * num_experts;

  // The forward's top-K set and softmax: lane k holds rank k.
  int slot_expert;
  float slot_logit;
  uint8_t rank[kItems];
  warp_top_k<kItems>(row, num_experts, top_k, lane, slot_expert, slot_logit, rank);
  double slot_sum;
  const double slot_exp = warp_top_k_exp(slot_logit, top_k, lane, slot_sum);
  const double s = slot_exp * approximate_reciprocal(slot_sum);

  // The token's entries (every lane computes the same bounds).
  int64_t n = int64_t(*num_routed);
  n = n < 0 ? 0 : n > capacity ? capacity : n;
  const int64_t begin = lower_bound(token_idx, n, t), end = lower_bound(token_idx, n, t + 1);

  double g_slot = 0.0;  // lane k < K: Σ dS of entries naming rank k's expert
  double g_pad[kItems];  // Σ dS of padded entries naming expert lane + 32 i
#pragma unroll
  for (int i = 0; i < kItems; ++i) g_pad[i] = 0.0;
  bool any_pad = false;
  for (int64_t base = begin; base < end; base += kWarpSize) {
    const int64_t j = base + lane;
    const bool valid = j < end;
    const int e = valid ? expert_idx[j] : -1;
    const double g = valid ? double(grad_scores[j]) : 0.0;
    bool in_top_k = false;
    for (int k = 0; k < top_k; ++k) in_top_k |= __shfl_sync(kFullMask, slot_expert, k) == e;
    const bool padded = valid && !in_top_k && e >= 0 && e < num_experts;
    any_pad |= __any_sync(kFullMask, padded);
    const int count = end - base < kWarpSize ? int(end - base) : kWarpSize;
    for (int jj = 0; jj < count; ++jj) {  // entries in list order: a fixed order of additions
      const int ej = __shfl_sync(kFullMask, e, jj);
      const double gj = __shfl_sync(kFullMask, g, jj);
      const bool pj = __shfl_sync(kFullMask, padded, jj);
      if (lane < top_k && ej == slot_expert) g_slot += gj;
      if (pj) {
#pragma unroll
        for (int i = 0; i < kItems; ++i)
          if (ej == lane + kWarpSize * i) g_pad[i] += gj;
      }
    }
  }

  // Renormalised-softmax term: d_k = s_k (g_k − Σ_j s_j g_j), rank order.
  double weighted = 0.0;
  for (int k = 0; k < top_k; ++k) weighted += __shfl_sync(kFullMask, g_slot * s, k);
  const double d_slot = s * (g_slot - weighted);

  // Items of this lane with an expert (e = lane + 32 i < E). Tested as i < items_here rather than
  // e < E: ptxas otherwise keeps the load loop's predicates alive to here and spills them.
  const int items_here = (num_experts - lane + kWarpSize - 1) / kWarpSize;
  double top = 0.0, inv_sum = 0.0, weighted_pad = 0.0;
  // Full-softmax term of the padded entries: Σ_e p_e g_pad_e, lane partials then a fixed tree.
  // p_e = exp(l_e − top) · (1 / sum), the reciprocal without a division (routing_device.cuh);
  // the last-bit difference from the forward's p does not matter for a bf16 gradient.
  if (any_pad) {  // uniform over the warp
    const float top_logit = __shfl_sync(kFullMask, slot_logit, 0);
    top = double(top_logit);
    inv_sum = approximate_reciprocal(warp_full_softmax_sum(row, num_experts, top_logit, lane));
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int e = lane + kWarpSize * i;
      if (i < items_here) weighted_pad += g_pad[i] * (exp(double(__ldg(row + e)) - top) * inv_sum);
    }
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset >>= 1)
      weighted_pad += __shfl_xor_sync(kFullMask, weighted_pad, offset);
  }

  bfloat16* out = grad_logits + t * num_experts;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = lane + kWarpSize * i;
    const int r = rank[i];  // 0, or rank + 1 of expert e in the top-K
    const double from_slot = __shfl_sync(kFullMask, d_slot, r > 0 ? r - 1 : 0);
    double value = r > 0 ? from_slot : 0.0;
    if (any_pad && i < items_here)
      value += exp(double(__ldg(row + e)) - top) * inv_sum * (g_pad[i] - weighted_pad);
    if (i < items_here) store_bf16(out, e, value);
  }
}

using detail::cuda_status;

Status check_array(const void* pointer, int64_t alignment, const char* name) {
  SONICMOE_RETURN_IF_ERROR(detail::check_not_null(pointer, name));
  return detail::require_aligned(pointer, name, uintptr_t(alignment));
}

Status validate_router_backward_params(const RouterBackwardParams& p) {
  constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();
  if (p.num_tokens <= 0) return Status::invalid_argument("num_tokens", concat("must be > 0 (got ", p.num_tokens, ")"));
  if (p.num_experts <= 0)
    return Status::invalid_argument("num_experts", concat("must be > 0 (got ", p.num_experts, ")"));
  if (p.top_k <= 0) return Status::invalid_argument("top_k", concat("must be > 0 (got ", p.top_k, ")"));
  if (p.top_k > p.num_experts)
    return Status::invalid_argument(
        "top_k", concat("must be <= num_experts (got top_k=", p.top_k, ", num_experts=", p.num_experts, ")"));
  if (p.top_k > kMaxTopK)
    return Status::invalid_argument("top_k", concat("must be <= ", kMaxTopK,
                                                    " for the GPU router backward (rank k in lane k) (got ",
                                                    p.top_k, ")"));
  if (p.num_tokens * p.top_k > kMaxInt32)
    return Status::invalid_argument("num_tokens", concat("num_tokens * top_k must fit in int32 routing indices (got ",
                                                         p.num_tokens, " * ", p.top_k, ")"));
  if (p.capacity < 0 || p.capacity > kMaxInt32)
    return Status::invalid_argument("capacity", concat("must be in [0, 2^31) (got ", p.capacity, ")"));
  SONICMOE_RETURN_IF_ERROR(check_array(p.grad_logits, 2, "grad_logits"));
  switch (p.kind) {
    case RoutingKind::top_k:
      if (p.capacity < p.num_tokens * p.top_k)
        return Status::invalid_argument("capacity", concat("must be >= num_tokens * top_k = ", p.num_tokens * p.top_k,
                                                           " for top_k routing (got ", p.capacity, ")"));
      SONICMOE_RETURN_IF_ERROR(check_array(p.expert_idx, 4, "expert_idx"));
      SONICMOE_RETURN_IF_ERROR(check_array(p.scores, 4, "scores"));
      SONICMOE_RETURN_IF_ERROR(check_array(p.grad_scores, 4, "grad_scores"));
      return {};
    case RoutingKind::token_rounding:
      if (p.num_experts > kMaxExperts)
        return Status::invalid_argument("num_experts", concat("must be <= ", kMaxExperts,
                                                              " for the GPU router backward of token rounding (a "
                                                              "token's logits live in one warp's registers) (got ",
                                                              p.num_experts, ")"));
      SONICMOE_RETURN_IF_ERROR(check_array(p.num_routed, 4, "num_routed"));
      SONICMOE_RETURN_IF_ERROR(check_array(p.logits, 4, "logits"));
      if (p.capacity > 0) {
        SONICMOE_RETURN_IF_ERROR(check_array(p.token_idx, 4, "token_idx"));
        SONICMOE_RETURN_IF_ERROR(check_array(p.expert_idx, 4, "expert_idx"));
        SONICMOE_RETURN_IF_ERROR(check_array(p.grad_scores, 4, "grad_scores"));
      }
      return {};
    case RoutingKind::general:
      return Status::invalid_argument("kind", "must be top_k or token_rounding: general routing has no router to "
                                              "differentiate");
  }
  return Status::invalid_argument("kind", concat("unknown routing kind code ", int(p.kind)));
}

template <int kItems>
void launch_rounding(const RouterBackwardParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  router_backward_rounding_kernel<kItems><<<dim3(unsigned(blocks)), kWarpsPerBlock * kWarpSize, 0, stream>>>(
      p.num_tokens, int(p.num_experts), int(p.top_k), p.capacity, p.num_routed, p.token_idx, p.expert_idx,
      p.grad_scores, p.logits, p.grad_logits);
}

}  // namespace

Status router_backward(const RouterBackwardParams& params, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate_router_backward_params(params));
  const RouterBackwardParams& p = params;
  const int64_t blocks = (p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (p.kind == RoutingKind::top_k) {
    router_backward_top_k_kernel<<<dim3(unsigned(blocks)), kWarpsPerBlock * kWarpSize, 0, stream>>>(
        p.num_tokens, int(p.num_experts), int(p.top_k), p.expert_idx, p.scores, p.grad_scores, p.grad_logits);
  } else {
    switch (items_per_lane(p.num_experts)) {
      case 1: launch_rounding<1>(p, stream); break;
      case 2: launch_rounding<2>(p, stream); break;
      case 4: launch_rounding<4>(p, stream); break;
      case 8: launch_rounding<8>(p, stream); break;
      case 16: launch_rounding<16>(p, stream); break;
      default: launch_rounding<32>(p, stream); break;
    }
  }
  return cuda_status(cudaGetLastError(), "router_backward kernel launch");
}

}  // namespace sonicmoe::routing
