// src/routing/routing_device.cuh — device pieces shared by the routing kernels (kernel R of
// DESIGN.md §4): the warp-level top-K of one logits row, the softmaxes of the CPU reference
// re-stated on the GPU with the same operation order, and block-wide integer scans.
//
// One warp owns one token. Lane l holds the logits of experts l, l+32, l+64, ... in registers
// (kItems = ceil(E/32) rounded up to a power of two, a template parameter so that the arrays stay
// in registers: a runtime index would send them to local memory). Each of the K rounds is a
// warp argmax on a 64-bit key (ordered logit bits, then the complemented expert index), so keys
// are unique and ties go to the lower expert, the reference's stable order.
//
// Softmaxes are computed in double with the reference's order of additions
// (src/reference/routing_reference.cpp, softmax_over): the top-K sum in rank order, the full sum
// in expert order, exp(l - top) / sum. Token rounding compares these values across tokens, so
// the same order of operations is what lets its tie-breaks agree with the reference; the only
// remaining difference is the last bit of exp() between CUDA's libdevice and the host libm.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/validate.h"
#include "sonicmoe/status.h"

namespace sonicmoe::routing::device {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;
// A token's logits live in one warp's registers: 32 per lane at most (64 registers of keys).
constexpr int kMaxExperts = 1024;
// Rank k of the top-K ends in lane k.
constexpr int kMaxTopK = 32;

// The router kernels' limits, checked on the host before a launch; `who` names the caller
// ("the GPU top-K", "GPU token rounding", ...).
inline Status check_router_limits(int64_t num_experts, int64_t top_k, const char* who) {
  if (num_experts > kMaxExperts)
    return Status::invalid_argument("num_experts", detail::concat("must be <= ", kMaxExperts, " for ", who,
                                                                  " (a token's logits live in one warp's registers) (got ",
                                                                  num_experts, ")"));
  if (top_k > kMaxTopK)
    return Status::invalid_argument(
        "top_k", detail::concat("must be <= ", kMaxTopK, " for ", who, " (rank k ends in lane k) (got ", top_k, ")"));
  return Status();
}

// Order-preserving map of a logit onto uint32 (larger logit -> larger value). -0 and +0 compare
// equal as in the reference. NaN maps to 0, below -inf: the reference rejects non-finite logits,
// the GPU cannot report without a host sync, so a NaN logit simply ranks last among real experts.
__device__ __forceinline__ uint32_t ordered_logit_bits(float v) {
  if (v != v) return 0u;
  if (v == 0.0f) v = 0.0f;
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float logit_from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);  // 0 -> all ones, a NaN
}

// Unique per expert and never 0 for a real expert (the low word ~e >= 0xfffffc00), so 0 marks
// an empty slot or a taken expert.
__device__ __forceinline__ uint64_t top_k_key(float logit, int expert) {
  return (uint64_t(ordered_logit_bits(logit)) << 32) | uint64_t(~uint32_t(expert));
}

// kItems for E experts: the smallest power of two >= ceil(E / 32), E <= kMaxExperts.
constexpr int items_per_lane(int64_t num_experts) {
  return num_experts <= 32 ? 1 : num_experts <= 64 ? 2 : num_experts <= 128 ? 4 : num_experts <= 256 ? 8
         : num_experts <= 512 ? 16 : 32;
}

// Top-K of one row of E logits (K <= min(E, 32)); every lane of the warp calls it.
// Out: lane k < K gets the expert and logit of rank k (descending logit, ties: lower expert);
// rank[i] of the lane is k + 1 when expert lane + 32 i has rank k, else 0.
template <int kItems>
__device__ __forceinline__ void warp_top_k(const float* __restrict__ row, int num_experts, int top_k, int lane,
                                           int& expert, float& logit, uint8_t (&rank)[kItems]) {
  uint64_t key[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = lane + kWarpSize * i;
    key[i] = e < num_experts ? top_k_key(__ldg(row + e), e) : 0ull;
    rank[i] = 0;
  }
  uint64_t mine = 0;
  for (int k = 0; k < top_k; ++k) {
    uint64_t best = key[0];
#pragma unroll
    for (int i = 1; i < kItems; ++i) best = key[i] > best ? key[i] : best;
    // Warp max of the 64-bit keys as two 32-bit REDUX instructions (high word, then the low
    // word among the lanes holding that high word) instead of five rounds of two shuffles: the
    // shuffles made the top-K kernel shuffle-throughput bound (43 us at T=24576, E=128, K=8).
    const uint32_t max_hi = __reduce_max_sync(kFullMask, uint32_t(best >> 32));
    const uint32_t max_lo = __reduce_max_sync(kFullMask, uint32_t(best >> 32) == max_hi ? uint32_t(best) : 0u);
    best = (uint64_t(max_hi) << 32) | max_lo;
    // K <= E, so `best` is a real, untaken expert: exactly one (lane, item) matches it.
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (key[i] == best) {
        key[i] = 0;
        rank[i] = uint8_t(k + 1);
      }
    if (lane == k) mine = best;
  }
  expert = lane < top_k ? int(~uint32_t(mine)) : -1;
  logit = logit_from_ordered_bits(uint32_t(mine >> 32));
}

// The pieces of the softmax over the K chosen logits (lane k holds rank k's logit), in double:
// returns lane k's exp(l_k − l_0) (0 for lanes >= K); `sum` gets their sum in rank order.
__device__ __forceinline__ double warp_top_k_exp(float logit, int top_k, int lane, double& sum) {
  const double top = double(__shfl_sync(kFullMask, logit, 0));  // rank 0 is the maximum
  const double ex = lane < top_k ? exp(double(logit) - top) : 0.0;
  sum = 0.0;
  for (int k = 0; k < top_k; ++k) sum += __shfl_sync(kFullMask, ex, k);
  return ex;
}

// Lane k's top-K score, exactly the reference's exp / sum.
__device__ __forceinline__ double warp_top_k_softmax(float logit, int top_k, int lane) {
  double sum;
  const double ex = warp_top_k_exp(logit, top_k, lane, sum);
  return ex / sum;
}

// 1 / x within an ulp or so, without the IEEE division (whose slow path is a called subroutine:
// values live across the call can make ptxas spill). For x in [1, 1024], the softmax sums, where
// the last bit does not matter (gradients). MUFU.RCP64H then two Newton steps.
__device__ __forceinline__ double approximate_reciprocal(double x) {
  double r;
  asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(x));
  double err = fma(-x, r, 1.0);
  r = fma(r, err, r);
  err = fma(-x, r, 1.0);
  return fma(r, err, r);
}

// Sum over all E experts of exp(l_e - top) in double, in expert order (the reference's order);
// `top` is the row's largest logit (rank 0 of the top-K). Every lane returns the same sum.
__device__ __forceinline__ double warp_full_softmax_sum(const float* __restrict__ row, int num_experts, float top,
                                                        int lane) {
  const double dtop = double(top);
  double sum = 0.0;
  // Not unrolled: one 32-expert chunk per iteration keeps the register footprint flat.
#pragma unroll 1
  for (int base = 0; base < num_experts; base += kWarpSize) {
    const int e = base + lane;
    const double ex = e < num_experts ? exp(double(__ldg(row + e)) - dtop) : 0.0;
    const int count = num_experts - base < kWarpSize ? num_experts - base : kWarpSize;
#pragma unroll 8
    for (int j = 0; j < kWarpSize; ++j) {
      const double v = __shfl_sync(kFullMask, ex, j);
      if (j < count) sum += v;
    }
  }
  return sum;
}

// Full-softmax probability of one expert from the row's statistics. The one expression used by
// every kernel that needs p[t, e] (selection keys and stored scores must agree bit for bit).
__device__ __forceinline__ double full_softmax_probability(float logit, float top, double sum) {
  return exp(double(logit) - double(top)) / sum;
}

__device__ __forceinline__ int warp_inclusive_sum(int v, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const int n = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += n;
  }
  return v;
}

// Exclusive prefix sum over the block in thread order; `total` gets the block's sum. blockDim.x
// must be a multiple of 32; every thread calls it. warp_sums: __shared__ int[32]. Ends with a
// barrier, so back-to-back calls may reuse warp_sums.
__device__ __forceinline__ int block_exclusive_sum(int v, int* warp_sums, int& total) {
  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  const int num_warps = int(blockDim.x) / kWarpSize;
  const int inclusive = warp_inclusive_sum(v, lane);
  if (lane == kWarpSize - 1) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int w = lane < num_warps ? warp_sums[lane] : 0;
    const int w_inclusive = warp_inclusive_sum(w, lane);
    if (lane < num_warps) warp_sums[lane] = w_inclusive;
  }
  __syncthreads();
  const int result = (warp > 0 ? warp_sums[warp - 1] : 0) + inclusive - v;
  total = warp_sums[num_warps - 1];
  __syncthreads();
  return result;
}

}  // namespace sonicmoe::routing::device
