// src/combine/combine.cu — the gather-and-sum kernels around the grouped GEMMs (DESIGN.md §4,
// kernels 3 and 8, the dS finish, the bias gradients). Every sum runs in a fixed order with fp32
// accumulation and no atomics, so results are bitwise repeatable; bf16 outputs are rounded once.
//
// combine_rows is bandwidth-bound (K rows of d bf16 read per token, one written). A token is
// handled by a group of whole warps (threads_per_token, a multiple of 32, at most 256); each
// thread owns 16-byte column vectors (8 bf16). The token's entry indices and scores are loaded
// once per 32 entries, one per lane, and broadcast by shuffles, so the data loads do not wait on
// an index load each; 8 rows are loaded before any is accumulated (128 bytes in flight per
// thread). Small d packs several tokens into a 256-thread block so no warp idles.
#include "combine/combine.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "core/device_checks.h"

namespace sonicmoe::combine {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kVec = 8;              // bf16 per 16-byte vector
constexpr int kRowsInFlight = 8;     // rows loaded before accumulating: 8 x uint4 = 32 registers
constexpr int kCombineThreads = 256;
// 4 blocks of 256 threads per SM caps registers at 64 (no spills; 80 without the cap): 1024
// threads x 128 bytes in flight = 128 KiB per SM, ~3x what H200 bandwidth x latency needs.
constexpr int kCombineMinBlocks = 4;
constexpr int kScoreGradThreads = 256;  // one warp per entry
constexpr int kColumnThreads = 128;     // 1024 columns per block
constexpr int kMaxGridY = 65535;

using detail::concat;
using detail::cuda_status;
using detail::require_feature_size;
using detail::require_optional_pointer;
using detail::require_pointer;
using detail::require_range;

// ---- device helpers ------------------------------------------------------------------------------

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The list length from a device scalar, clamped to [0, capacity]; the capacity when null.
__device__ __forceinline__ int64_t device_length(const int32_t* num_routed, int64_t capacity) {
  return num_routed == nullptr ? capacity : clamp64(*num_routed, 0, capacity);
}

// acc[0..8) += w * the 8 bf16 of x, element order = column order.
__device__ __forceinline__ void fma_bf16x8(float (&acc)[kVec], const uint4& x, float w) {
  const uint32_t words[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    acc[2 * q] = fmaf(w, __uint_as_float(words[q] << 16), acc[2 * q]);
    acc[2 * q + 1] = fmaf(w, __uint_as_float(words[q] & 0xffff0000u), acc[2 * q + 1]);
  }
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low half), round to nearest even
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint4 pack_bf16x8(const float (&acc)[kVec]) {
  return make_uint4(pack_bf16x2(acc[0], acc[1]), pack_bf16x2(acc[2], acc[3]), pack_bf16x2(acc[4], acc[5]),
                    pack_bf16x2(acc[6], acc[7]));
}

// Adds, in order, w_k * src[row_k][v] for the n (<= 32) rows whose (row, weight) lane k holds.
// Every lane of the warp must call it (shuffles); `active` lanes load and accumulate.
__device__ __forceinline__ void accumulate_rows(float (&acc)[kVec], const uint4* __restrict__ src,
                                                int64_t vectors_per_row, int64_t v, bool active, int n,
                                                int my_row, float my_weight) {
  for (int k = 0; k < n; k += kRowsInFlight) {  // k <= 24, so k + j <= 31
    uint4 x[kRowsInFlight];
#pragma unroll
    for (int j = 0; j < kRowsInFlight; ++j) {
      const int row = __shfl_sync(kFullMask, my_row, k + j);
      x[j] = (active && k + j < n) ? __ldg(src + int64_t(row) * vectors_per_row + v) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kRowsInFlight; ++j) {
      const float w = __shfl_sync(kFullMask, my_weight, k + j);
      if (k + j < n) fma_bf16x8(acc, x[j], w);
    }
  }
}

// First index in [lo, hi) whose value is >= target (hi when none), found by the 32 lanes of a
// warp probing 32 points per step (33-ary search: ~4 steps for a million entries instead of 20
// dependent loads). On unsorted data the result is meaningless but stays in [lo, hi].
__device__ int warp_lower_bound(const int32_t* __restrict__ a, int lo, int hi, int target, int lane) {
  while (hi - lo > 32) {
    const int span = hi - lo;
    const int p = lo + int((int64_t(span) * (lane + 1)) / 33);  // distinct, in (lo, hi)
    const unsigned ge = __ballot_sync(kFullMask, a[p] >= target);
    if (ge == 0) {
      lo = __shfl_sync(kFullMask, p, 31) + 1;
    } else {
      const int j = __ffs(ge) - 1;
      const int pj = __shfl_sync(kFullMask, p, j);
      const int before = __shfl_sync(kFullMask, p, j > 0 ? j - 1 : 0);
      hi = pj;
      if (j > 0) lo = before + 1;
    }
  }
  const bool ge = lo + lane < hi && a[lo + lane] >= target;
  const unsigned mask = __ballot_sync(kFullMask, ge);
  return mask ? lo + __ffs(mask) - 1 : hi;
}

// ---- combine_rows --------------------------------------------------------------------------------
__global__ void __launch_bounds__(kCombineThreads, kCombineMinBlocks)
    combine_rows_kernel(const CombineRowsParams p, int threads_per_token) {
  const int tokens_per_block = blockDim.x / threads_per_token;
  const int64_t t = int64_t(blockIdx.x) * tokens_per_block + threadIdx.x / threads_per_token;
  if (t >= p.num_tokens) return;  // whole warps: threads_per_token is a multiple of 32
  const int g = threadIdx.x % threads_per_token;
  const int lane = threadIdx.x & 31;

  int64_t first, count;
  if (p.top_k > 0) {
    first = t * p.top_k;
    count = p.top_k;
  } else {
    const int length = int(device_length(p.num_routed, p.capacity));
    const int begin = warp_lower_bound(p.token_idx, 0, length, int(t), lane);
    const int end = warp_lower_bound(p.token_idx, begin, length, int(t) + 1, lane);
    first = begin;
    count = end - begin;
  }

  const int64_t vectors = p.hidden / kVec;
  const uint4* rows = reinterpret_cast<const uint4*>(p.rows);
  uint4* out = reinterpret_cast<uint4*>(p.out) + t * vectors;
  const int64_t last_row = p.capacity - 1;
  // (row, weight) of entry first + k0 + lane, for the lanes below the batch size.
  auto load_entry = [&](int64_t k0, int n, int& row, float& weight) {
    row = 0;
    weight = 1.0f;
    if (lane < n) {
      const int64_t i = first + k0 + lane;
      row = int(clamp64(p.reverse_idx[i], 0, last_row));
      if (p.scores) weight = p.scores[i];
    }
  };
  // The first 32 entries (all of a top-K token for K <= 32) are loaded once for every column vector.
  const int n0 = int(count < 32 ? count : 32);
  int row0;
  float weight0;
  load_entry(0, n0, row0, weight0);
  for (int64_t v0 = 0; v0 < vectors; v0 += threads_per_token) {  // warp-uniform trip count
    const int64_t v = v0 + g;
    const bool active = v < vectors;
    float acc[kVec] = {};
    accumulate_rows(acc, rows, vectors, v, active, n0, row0, weight0);
    for (int64_t k0 = 32; k0 < count; k0 += 32) {
      const int n = int(count - k0 < 32 ? count - k0 : 32);
      int row;
      float weight;
      load_entry(k0, n, row, weight);
      accumulate_rows(acc, rows, vectors, v, active, n, row, weight);
    }
    if (active) out[v] = pack_bf16x8(acc);
  }
}

// ---- finish_score_grad ----------------------------------------------------------------------------
__global__ void __launch_bounds__(kScoreGradThreads) finish_score_grad_kernel(const ScoreGradParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (i >= device_length(p.num_routed, p.capacity)) return;  // warp-uniform
  // Coalesced loads, then every lane adds the columns in increasing order (lane 0 stores).
  const float* partial = p.partial + i * p.partial_cols;
  float sum = 0.0f;
  for (int64_t j0 = 0; j0 < p.partial_cols; j0 += 32) {
    const float value = j0 + lane < p.partial_cols ? partial[j0 + lane] : 0.0f;
    const int n = int(p.partial_cols - j0 < 32 ? p.partial_cols - j0 : 32);
    for (int j = 0; j < n; ++j) sum += __shfl_sync(kFullMask, value, j);
  }
  if (p.b2 != nullptr) {
    // <grad_out[t], b2[e]>, indices clamped into range.
    const int64_t vectors = p.hidden / kVec;
    const int64_t t = clamp64(p.token_idx[i], 0, p.num_tokens - 1);
    const int64_t e = clamp64(p.expert_idx[i], 0, p.num_experts - 1);
    const uint4* go = reinterpret_cast<const uint4*>(p.grad_out) + t * vectors;
    const uint4* bias = reinterpret_cast<const uint4*>(p.b2) + e * vectors;
    float dot = 0.0f;
    for (int64_t v = lane; v < vectors; v += 32) {
      const uint4 a = __ldg(go + v), b = __ldg(bias + v);
      const uint32_t aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        dot = fmaf(__uint_as_float(aw[q] << 16), __uint_as_float(bw[q] << 16), dot);
        dot = fmaf(__uint_as_float(aw[q] & 0xffff0000u), __uint_as_float(bw[q] & 0xffff0000u), dot);
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(kFullMask, dot, offset);
    sum += dot;
  }
  if (lane == 0) p.grad_scores[i] = sum;
}

// Without bias there is no dot product to share across a warp: one thread per entry sums its
// partial columns in the same increasing order (the same bits as the warp kernel). One warp per
// entry measured 37 us at TK = 196608 (H200, ncu), launch- and occupancy-bound for ~1 add each.
__global__ void __launch_bounds__(kScoreGradThreads) finish_score_grad_no_bias_kernel(const ScoreGradParams p) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= device_length(p.num_routed, p.capacity)) return;
  const float* partial = p.partial + i * p.partial_cols;
  float sum = 0.0f;
  for (int64_t j = 0; j < p.partial_cols; ++j) sum += partial[j];
  p.grad_scores[i] = sum;
}

// ---- expert_column_sums ---------------------------------------------------------------------------
// Block (expert, column chunk): each thread owns 8 columns and walks the expert's rows in
// increasing order, 8 rows in flight; sources and weights of 32 rows come one per lane.
__global__ void __launch_bounds__(kColumnThreads) expert_column_sums_kernel(const ExpertColumnSumParams p) {
  const int64_t e = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int64_t vectors = p.cols / kVec;
  const int64_t begin = clamp64(p.expert_offsets[e], 0, p.capacity);
  const int64_t end = clamp64(p.expert_offsets[e + 1], begin, p.capacity);
  const uint4* src = reinterpret_cast<const uint4*>(p.src);
  uint4* out = reinterpret_cast<uint4*>(p.out) + e * vectors;
  for (int64_t v0 = int64_t(blockIdx.y) * blockDim.x; v0 < vectors; v0 += int64_t(gridDim.y) * blockDim.x) {
    const int64_t v = v0 + threadIdx.x;
    const bool active = v < vectors;
    float acc[kVec] = {};
    for (int64_t r0 = begin; r0 < end; r0 += 32) {
      const int n = int(end - r0 < 32 ? end - r0 : 32);
      int my_row = 0;
      float my_weight = 1.0f;
      if (lane < n) {
        const int64_t r = r0 + lane;
        my_row = int(clamp64(p.gather_idx ? p.gather_idx[r] : r, 0, p.src_rows - 1));
        if (p.row_scale) my_weight = p.row_scale[clamp64(p.scatter_idx[r], 0, p.capacity - 1)];
      }
      accumulate_rows(acc, src, vectors, v, active, n, my_row, my_weight);
    }
    if (active) out[v] = pack_bf16x8(acc);
  }
}

}  // namespace

Status combine_rows(const CombineRowsParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(require_range(p.num_tokens, "num_tokens", 1, INT32_MAX - 1));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(require_range(p.capacity, "capacity", 0, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_range(p.top_k, "top_k", 0, INT32_MAX));
  if (p.top_k > 0 && p.num_tokens * p.top_k > p.capacity)
    return Status::invalid_argument("capacity", concat("must be >= num_tokens * top_k (got capacity=", p.capacity,
                                                       ", num_tokens=", p.num_tokens, ", top_k=", p.top_k, ")"));
  if (p.top_k == 0) {
    SONICMOE_RETURN_IF_ERROR(require_pointer(p.num_routed, "num_routed", 4));
    if (p.capacity > 0) SONICMOE_RETURN_IF_ERROR(require_pointer(p.token_idx, "token_idx", 4));
  }
  if (p.capacity > 0) {
    SONICMOE_RETURN_IF_ERROR(require_pointer(p.reverse_idx, "reverse_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_optional_pointer(p.scores, "scores", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(p.rows, "rows", 16));
  }
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.out, "out", 16));

  const int64_t vectors = p.hidden / kVec;
  const int threads_per_token = int(vectors >= kCombineThreads ? kCombineThreads : (vectors + 31) / 32 * 32);
  const int tokens_per_block = kCombineThreads / threads_per_token;
  const int64_t blocks = (p.num_tokens + tokens_per_block - 1) / tokens_per_block;
  combine_rows_kernel<<<unsigned(blocks), tokens_per_block * threads_per_token, 0, stream>>>(p, threads_per_token);
  return cuda_status(cudaGetLastError(), "combine_rows_kernel launch");
}

Status finish_score_grad(const ScoreGradParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(require_range(p.capacity, "capacity", 0, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_range(p.partial_cols, "partial_cols", 1, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_optional_pointer(p.num_routed, "num_routed", 4));
  if (p.capacity > 0) {
    SONICMOE_RETURN_IF_ERROR(require_pointer(p.partial, "partial", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_scores, "grad_scores", 4));
  }
  if (p.b2 != nullptr) {
    SONICMOE_RETURN_IF_ERROR(require_feature_size(p.hidden, "hidden"));
    SONICMOE_RETURN_IF_ERROR(require_range(p.num_tokens, "num_tokens", 1, INT32_MAX));
    SONICMOE_RETURN_IF_ERROR(require_range(p.num_experts, "num_experts", 1, INT32_MAX));
    SONICMOE_RETURN_IF_ERROR(require_pointer(p.b2, "b2", 16));
    if (p.capacity > 0) {
      SONICMOE_RETURN_IF_ERROR(require_pointer(p.token_idx, "token_idx", 4));
      SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_idx, "expert_idx", 4));
      SONICMOE_RETURN_IF_ERROR(require_pointer(p.grad_out, "grad_out", 16));
    }
  }
  if (p.capacity == 0) return {};
  if (p.b2 == nullptr) {
    const int64_t blocks = (p.capacity + kScoreGradThreads - 1) / kScoreGradThreads;
    finish_score_grad_no_bias_kernel<<<unsigned(blocks), kScoreGradThreads, 0, stream>>>(p);
    return cuda_status(cudaGetLastError(), "finish_score_grad_no_bias_kernel launch");
  }
  const int64_t entries_per_block = kScoreGradThreads / 32;
  const int64_t blocks = (p.capacity + entries_per_block - 1) / entries_per_block;
  finish_score_grad_kernel<<<unsigned(blocks), kScoreGradThreads, 0, stream>>>(p);
  return cuda_status(cudaGetLastError(), "finish_score_grad_kernel launch");
}

Status expert_column_sums(const ExpertColumnSumParams& p, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(require_range(p.num_experts, "num_experts", 1, INT32_MAX - 1));
  SONICMOE_RETURN_IF_ERROR(require_feature_size(p.cols, "cols"));
  SONICMOE_RETURN_IF_ERROR(require_range(p.src_rows, "src_rows", 1, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_range(p.capacity, "capacity", 0, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.expert_offsets, "expert_offsets", 4));
  SONICMOE_RETURN_IF_ERROR(require_optional_pointer(p.gather_idx, "gather_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_optional_pointer(p.row_scale, "row_scale", 4));
  if (p.row_scale != nullptr) SONICMOE_RETURN_IF_ERROR(require_pointer(p.scatter_idx, "scatter_idx", 4));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.src, "src", 16));
  SONICMOE_RETURN_IF_ERROR(require_pointer(p.out, "out", 16));
  const int64_t chunks = (p.cols / kVec + kColumnThreads - 1) / kColumnThreads;
  const dim3 grid(unsigned(p.num_experts), unsigned(chunks < kMaxGridY ? chunks : kMaxGridY));
  expert_column_sums_kernel<<<grid, kColumnThreads, 0, stream>>>(p);
  return cuda_status(cudaGetLastError(), "expert_column_sums_kernel launch");
}

}  // namespace sonicmoe::combine
