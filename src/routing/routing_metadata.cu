// src/routing/routing_metadata.cu — the routing metadata of a flat routing list on the GPU
// (DESIGN.md §4, kernel R: counts, offsets, index arrays) and the device-side check of a caller's
// general routing list. Sits between the router (top-K or token rounding) and the grouped GEMMs,
// which read expert_offsets, gather_idx, scatter_idx and reverse_idx.
//
// Metadata in four stream-ordered kernels, no host synchronisation, no atomics on the result:
//   1. histogram    one block per chunk of entries: per-expert counts of the chunk -> workspace,
//                   stored expert-major [E][chunks] so that step 2 reads each expert contiguously;
//   2. chunk scan   one warp per expert: exclusive scan over the chunks (in place) and the
//                   expert's total;
//   3. offsets      one block: exclusive scan of the totals -> expert_offsets[0..E];
//   4. indices      one block per chunk: each entry's rank among the earlier entries of its expert
//                   in the chunk (warp match_any inside a warp, warps taken in order through
//                   shared per-expert counters) -> row; writes gather/scatter/reverse.
// The grouped order is by expert, then flat index: exactly reference::build_routing_metadata.
// Grids are sized from the host-known capacity; blocks whose chunk starts past the device length
// exit. Expert and token ids outside their ranges are clamped into range, so a corrupt list gives
// meaningless but in-bounds metadata (run check_routing_list on untrusted lists).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "core/device_checks.h"
#include "core/validate.h"
#include "sonicmoe/gpu_routing.h"

namespace sonicmoe {
namespace {

using detail::concat;

constexpr unsigned kFullMask = 0xffffffffu;
// Shared per-expert counters of kernels 1 and 4 (4 bytes each) stay within the 48 KiB of shared
// memory available without an opt-in: 8192 * 4 = 32 KiB.
constexpr int64_t kMaxExperts = 8192;
// Entries per chunk: 2048 keeps ~130 blocks busy for T*K = 256K while the workspace stays at
// (chunks + 1) * E ints. Past kMaxChunks chunks the chunk size doubles, so the workspace is bounded
// by (kMaxChunks + 1) * E * 4 bytes (32 MiB at E = 8192) and the scan of kernel 2 by 8 steps per
// expert.
constexpr int64_t kBaseChunk = 2048;
constexpr int64_t kMaxChunks = 1024;
constexpr int kChunkThreads = 256;  // kernels 1, 2 and 4: 8 warps, 8 ordered rounds per tile
constexpr int kTilesPerGroup = 8;   // entries a thread loads at once in kernels 1 and 4
constexpr int64_t kGroupEntries = int64_t(kTilesPerGroup) * kChunkThreads;  // 2048
static_assert(kBaseChunk % kGroupEntries == 0, "chunks are whole groups");
constexpr int kScanThreads = 1024;  // kernel 3: 32 warps, one warp sum per lane of warp 0
static_assert(kMaxExperts <= 8 * kScanThreads, "kernel 3 comment: at most 8 experts per thread");
constexpr int kCheckThreads = 256;

int64_t chunk_entries(int64_t capacity) {
  int64_t chunk = kBaseChunk;
  while ((capacity + chunk - 1) / chunk > kMaxChunks) chunk *= 2;
  return chunk;
}

int64_t chunk_count(int64_t capacity) {
  return capacity <= 0 ? 0 : (capacity + chunk_entries(capacity) - 1) / chunk_entries(capacity);
}

using detail::cuda_status;
using detail::require_pointer;
using detail::require_range;

// ---- device helpers --------------------------------------------------------------------------

// The list's actual length: the device scalar clamped to [0, capacity], or the capacity.
__device__ __forceinline__ int64_t list_length(const int64_t* device_num_routed, int64_t capacity) {
  if (device_num_routed == nullptr) return capacity;
  const int64_t n = *device_num_routed;
  return n < 0 ? 0 : (n > capacity ? capacity : n);
}

__device__ __forceinline__ int clamp_index(int v, int n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

__device__ __forceinline__ int warp_inclusive_scan(int v, int lane) {
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

// ---- kernel 1: per-chunk histogram ------------------------------------------------------------
// A thread loads its kTilesPerGroup entries of a 2048-entry group at once (all loads in flight),
// then the warps count them.
__global__ void __launch_bounds__(kChunkThreads)
    expert_histogram_kernel(const int32_t* __restrict__ expert_idx, const int64_t* device_num_routed,
                            int64_t capacity, int64_t chunk_size, int num_chunks, int num_experts,
                            int32_t* __restrict__ counts) {
  extern __shared__ int32_t hist[];  // [num_experts]
  const int64_t length = list_length(device_num_routed, capacity);
  const int64_t begin = int64_t(blockIdx.x) * chunk_size;
  if (begin >= length) return;  // the scans read only chunks below the length
  const int64_t end = begin + chunk_size < length ? begin + chunk_size : length;
  const int lane = threadIdx.x & 31;
  for (int e = threadIdx.x; e < num_experts; e += kChunkThreads) hist[e] = 0;
  __syncthreads();
  for (int64_t base = begin; base < end; base += kGroupEntries) {  // block-uniform trip count
    int e[kTilesPerGroup];
#pragma unroll
    for (int j = 0; j < kTilesPerGroup; ++j) {
      const int64_t i = base + j * kChunkThreads + threadIdx.x;
      e[j] = i < end ? clamp_index(expert_idx[i], num_experts) : -1;
    }
#pragma unroll
    for (int j = 0; j < kTilesPerGroup; ++j) {
      // One shared atomic per expert and warp: a list with every entry on one expert would
      // otherwise serialise 32 atomics on one address per warp.
      const unsigned peers = __match_any_sync(kFullMask, e[j]);
      if (e[j] >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[e[j]], __popc(peers));
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += kChunkThreads)
    counts[int64_t(e) * num_chunks + blockIdx.x] = hist[e];
}

// ---- kernel 2: per expert, an exclusive scan over the chunks ------------------------------------
// One warp per expert (counts are expert-major, so a warp reads 128 contiguous chunks per step,
// at most kMaxChunks / 128 = 8 steps). In place: counts[e][c] becomes the number of entries of
// expert e in chunks before c. totals[e] = the expert's count.
__global__ void __launch_bounds__(kChunkThreads)
    chunk_scan_kernel(const int64_t* device_num_routed, int64_t capacity, int64_t chunk_size, int num_chunks,
                      int num_experts, int32_t* __restrict__ counts, int32_t* __restrict__ totals) {
  const int lane = threadIdx.x & 31;
  const int e = int(blockIdx.x) * (kChunkThreads / 32) + (threadIdx.x >> 5);
  if (e >= num_experts) return;  // whole warps
  const int64_t length = list_length(device_num_routed, capacity);
  const int active = int((length + chunk_size - 1) / chunk_size);  // chunks holding entries
  int32_t* row = counts + int64_t(e) * num_chunks;
  int32_t carry = 0;
  for (int c0 = 0; c0 < active; c0 += 128) {
    int32_t v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + lane * 4 + j;
      v[j] = c < active ? row[c] : 0;
    }
    const int32_t lane_sum = v[0] + v[1] + v[2] + v[3];
    const int32_t inclusive = warp_inclusive_scan(lane_sum, lane);
    int32_t run = carry + inclusive - lane_sum;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + lane * 4 + j;
      if (c < active) row[c] = run;
      run += v[j];
    }
    carry += __shfl_sync(kFullMask, inclusive, 31);
  }
  if (lane == 0) totals[e] = carry;
}

// ---- kernel 3: exclusive scan of the experts' totals -> expert_offsets[0..E] --------------------
// One block; each thread a contiguous run of at most kMaxExperts / kScanThreads = 8 experts.
// totals == nullptr: an empty capacity, every count is 0.
__global__ void __launch_bounds__(kScanThreads)
    expert_offsets_kernel(const int32_t* __restrict__ totals, int num_experts, int32_t* __restrict__ expert_offsets) {
  __shared__ int32_t warp_sums[kScanThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int per_thread = (num_experts + kScanThreads - 1) / kScanThreads;
  const int first = threadIdx.x * per_thread;
  int32_t local = 0;
  if (totals)
    for (int k = 0; k < per_thread; ++k)
      if (first + k < num_experts) local += totals[first + k];
  const int32_t inclusive = warp_inclusive_scan(local, lane);
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) warp_sums[lane] = warp_inclusive_scan(warp_sums[lane], lane);  // 32 warps: one per lane
  __syncthreads();
  int32_t run = (warp > 0 ? warp_sums[warp - 1] : 0) + inclusive - local;
  for (int k = 0; k < per_thread; ++k)
    if (first + k < num_experts) {
      expert_offsets[first + k] = run;
      if (totals) run += totals[first + k];
    }
  if (threadIdx.x == 0) expert_offsets[num_experts] = warp_sums[kScanThreads / 32 - 1];
}

// ---- kernel 4: ranks -> gather / scatter / reverse ----------------------------------------------
__global__ void __launch_bounds__(kChunkThreads)
    grouped_indices_kernel(const int32_t* __restrict__ token_idx, const int32_t* __restrict__ expert_idx,
                           const int64_t* device_num_routed, int64_t capacity, int64_t chunk_size, int num_chunks,
                           int num_tokens, int num_experts, const int32_t* __restrict__ chunk_starts,
                           const int32_t* __restrict__ expert_offsets, int32_t* __restrict__ gather_idx,
                           int32_t* __restrict__ scatter_idx, int32_t* __restrict__ reverse_idx) {
  extern __shared__ int32_t next_row[];  // [num_experts]: the next free grouped row per expert
  const int64_t length = list_length(device_num_routed, capacity);
  const int64_t begin = int64_t(blockIdx.x) * chunk_size;
  if (begin >= length) return;
  const int64_t end = begin + chunk_size < length ? begin + chunk_size : length;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int e = threadIdx.x; e < num_experts; e += kChunkThreads)
    next_row[e] = expert_offsets[e] + chunk_starts[int64_t(e) * num_chunks + blockIdx.x];
  __syncthreads();

  for (int64_t base = begin; base < end; base += kGroupEntries) {  // block-uniform trip count
    int e[kTilesPerGroup], t[kTilesPerGroup];
#pragma unroll
    for (int j = 0; j < kTilesPerGroup; ++j) {
      const int64_t i = base + j * kChunkThreads + threadIdx.x;
      e[j] = i < end ? clamp_index(expert_idx[i], num_experts) : -1;
      t[j] = i < end ? clamp_index(token_idx[i], num_tokens) : 0;
    }
#pragma unroll
    for (int j = 0; j < kTilesPerGroup; ++j) {
      const int64_t i = base + j * kChunkThreads + threadIdx.x;
      const bool valid = e[j] >= 0;
      const unsigned peers = __match_any_sync(kFullMask, e[j]);
      const int leader = __ffs(peers) - 1;
      // Warps claim rows in warp order, one round each: the leader of each expert group takes
      // popc(peers) rows. Lanes of a warp hold consecutive entries, tiles and warps are taken in
      // flat order, so ranks follow the flat index.
      int32_t first_row = 0;
      for (int w = 0; w < kChunkThreads / 32; ++w) {
        if (w == warp && valid && lane == leader) {
          first_row = next_row[e[j]];
          next_row[e[j]] = first_row + __popc(peers);
        }
        __syncthreads();
      }
      first_row = __shfl_sync(kFullMask, first_row, leader);
      if (valid) {
        const int32_t row = first_row + __popc(peers & lanes_below);
        gather_idx[row] = t[j];
        scatter_idx[row] = int32_t(i);
        reverse_idx[i] = row;
      }
    }
  }
}

// ---- routing-list check -------------------------------------------------------------------------

// The first rule entry i breaks, in the order of validate_routing_list, assuming the entries
// before it are valid (true for the lowest offending entry, the only one that is reported).
__device__ int entry_error(const int32_t* __restrict__ token_idx, const int32_t* __restrict__ expert_idx,
                           const float* __restrict__ scores, int64_t i, int num_tokens, int num_experts) {
  const int t = token_idx[i];
  if (t < 0 || t >= num_tokens) return int(RoutingListError::token_out_of_range);
  if (i > 0 && token_idx[i - 1] > t) return int(RoutingListError::tokens_not_sorted);
  const int e = expert_idx[i];
  if (e < 0 || e >= num_experts) return int(RoutingListError::expert_out_of_range);
  // Entries of a token are contiguous: look back over them. A valid prefix holds at most E
  // distinct experts per token, so after E earlier entries of the same token without a match
  // an earlier entry is already invalid and this entry's code does not matter: stop there.
  int seen = 0;
  for (int64_t j = i - 1; j >= 0 && token_idx[j] == t; --j) {
    if (expert_idx[j] == e || ++seen >= num_experts) return int(RoutingListError::duplicate_expert);
  }
  if (!isfinite(scores[i])) return int(RoutingListError::score_not_finite);
  return int(RoutingListError::ok);
}

// Keys (entry << 8 | code): the minimum is the lowest offending entry, whatever the launch order.
__global__ void __launch_bounds__(kCheckThreads)
    check_routing_list_kernel(const int32_t* __restrict__ token_idx, const int32_t* __restrict__ expert_idx,
                              const float* __restrict__ scores, int64_t num_routed, int num_tokens, int num_experts,
                              unsigned long long* first_error) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  unsigned long long key = ~0ull;
  if (i < num_routed) {
    const int code = entry_error(token_idx, expert_idx, scores, i, num_tokens, num_experts);
    if (code != 0) key = (static_cast<unsigned long long>(i) << 8) | static_cast<unsigned long long>(code);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const unsigned long long other = __shfl_xor_sync(kFullMask, key, offset);
    key = other < key ? other : key;
  }
  if ((threadIdx.x & 31) == 0 && key != ~0ull) atomicMin(first_error, key);
}

__global__ void check_routing_list_finalize_kernel(RoutingListCheck* result) {
  const unsigned long long key = *reinterpret_cast<const unsigned long long*>(result);
  RoutingListCheck out;
  if (key == ~0ull) {
    out.code = 0;
    out.entry = -1;
  } else {
    out.code = int32_t(key & 0xffull);
    out.entry = int32_t(key >> 8);
  }
  *result = out;
}

}  // namespace

int64_t routing_metadata_workspace_bytes(int64_t capacity, int64_t num_experts) {
  if (capacity <= 0 || num_experts <= 0) return 0;
  // Chunk counts/starts [E][chunks], then the experts' totals [E].
  return (chunk_count(capacity) + 1) * num_experts * int64_t(sizeof(int32_t));
}

Status build_routing_metadata(const RoutingMetadataParams& params, const int64_t* device_num_routed, void* workspace,
                              int64_t workspace_bytes, cudaStream_t stream) {
  const RoutingList& list = params.routing;
  const RoutingMetadata& meta = params.metadata;
  SONICMOE_RETURN_IF_ERROR(require_range(params.num_tokens, "num_tokens", 1, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_range(params.num_experts, "num_experts", 1, kMaxExperts));
  SONICMOE_RETURN_IF_ERROR(require_range(list.num_routed, "routing.num_routed", 0, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_pointer(meta.expert_offsets, "metadata.expert_offsets", 4));
  const int64_t capacity = list.num_routed;
  if (capacity > 0) {
    SONICMOE_RETURN_IF_ERROR(require_pointer(list.token_idx, "routing.token_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(list.expert_idx, "routing.expert_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(meta.gather_idx, "metadata.gather_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(meta.scatter_idx, "metadata.scatter_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(meta.reverse_idx, "metadata.reverse_idx", 4));
  }
  if (device_num_routed != nullptr)
    SONICMOE_RETURN_IF_ERROR(require_pointer(device_num_routed, "device_num_routed", 8));
  const int64_t needed = routing_metadata_workspace_bytes(capacity, params.num_experts);
  if (workspace_bytes < needed)
    return Status::invalid_argument(
        "workspace_bytes", concat("must be >= routing_metadata_workspace_bytes(capacity=", capacity,
                                  ", num_experts=", params.num_experts, ") = ", needed, " (got ", workspace_bytes, ")"));
  if (needed > 0) SONICMOE_RETURN_IF_ERROR(require_pointer(workspace, "workspace", 4));

  const int num_experts = int(params.num_experts);
  const int num_chunks = int(chunk_count(capacity));
  const int64_t chunk_size = chunk_entries(capacity);
  const size_t expert_smem = size_t(num_experts) * sizeof(int32_t);
  int32_t* counts = static_cast<int32_t*>(workspace);
  int32_t* totals = num_chunks > 0 ? counts + int64_t(num_chunks) * num_experts : nullptr;

  if (num_chunks > 0) {
    expert_histogram_kernel<<<num_chunks, kChunkThreads, expert_smem, stream>>>(
        list.expert_idx, device_num_routed, capacity, chunk_size, num_chunks, num_experts, counts);
    SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "expert_histogram_kernel launch"));
    const int scan_blocks = (num_experts + kChunkThreads / 32 - 1) / (kChunkThreads / 32);
    chunk_scan_kernel<<<scan_blocks, kChunkThreads, 0, stream>>>(device_num_routed, capacity, chunk_size, num_chunks,
                                                                 num_experts, counts, totals);
    SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "chunk_scan_kernel launch"));
  }
  expert_offsets_kernel<<<1, kScanThreads, 0, stream>>>(totals, num_experts, meta.expert_offsets);
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "expert_offsets_kernel launch"));
  if (num_chunks > 0) {
    grouped_indices_kernel<<<num_chunks, kChunkThreads, expert_smem, stream>>>(
        list.token_idx, list.expert_idx, device_num_routed, capacity, chunk_size, num_chunks, int(params.num_tokens),
        num_experts, counts, meta.expert_offsets, meta.gather_idx, meta.scatter_idx, meta.reverse_idx);
    SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "grouped_indices_kernel launch"));
  }
  return {};
}

const char* to_string(RoutingListError e) {
  switch (e) {
    case RoutingListError::ok: return "valid";
    case RoutingListError::token_out_of_range: return "token index outside [0, num_tokens)";
    case RoutingListError::tokens_not_sorted: return "token indices must be sorted (non-decreasing)";
    case RoutingListError::expert_out_of_range: return "expert index outside [0, num_experts)";
    case RoutingListError::duplicate_expert: return "a token is routed to the same expert twice";
    case RoutingListError::score_not_finite: return "score is not finite";
  }
  return "unknown routing-list error";
}

Status check_routing_list(const RoutingList& routing, int64_t num_tokens, int64_t num_experts,
                          RoutingListCheck* result, cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(require_range(num_tokens, "num_tokens", 1, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_range(num_experts, "num_experts", 1, INT32_MAX));
  SONICMOE_RETURN_IF_ERROR(require_range(routing.num_routed, "routing.num_routed", 0, INT32_MAX));
  if (routing.num_routed > 0) {
    SONICMOE_RETURN_IF_ERROR(require_pointer(routing.token_idx, "routing.token_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(routing.expert_idx, "routing.expert_idx", 4));
    SONICMOE_RETURN_IF_ERROR(require_pointer(routing.scores, "routing.scores", 4));
  }
  // The result doubles as the 64-bit atomicMin key while the check runs.
  SONICMOE_RETURN_IF_ERROR(require_pointer(result, "result", 8));

  SONICMOE_RETURN_IF_ERROR(
      cuda_status(cudaMemsetAsync(result, 0xFF, sizeof(unsigned long long), stream), "cudaMemsetAsync(result)"));
  if (routing.num_routed > 0) {
    const int64_t blocks = (routing.num_routed + kCheckThreads - 1) / kCheckThreads;
    check_routing_list_kernel<<<unsigned(blocks), kCheckThreads, 0, stream>>>(
        routing.token_idx, routing.expert_idx, routing.scores, routing.num_routed, int(num_tokens), int(num_experts),
        reinterpret_cast<unsigned long long*>(result));
    SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "check_routing_list_kernel launch"));
  }
  check_routing_list_finalize_kernel<<<1, 1, 0, stream>>>(result);
  return cuda_status(cudaGetLastError(), "check_routing_list_finalize_kernel launch");
}

Status routing_list_status(const RoutingListCheck& check, const char* name) {
  if (check.code == int32_t(RoutingListError::ok)) return {};
  const std::string argument = name ? name : "routing";
  if (check.code < 0 || check.code > int32_t(RoutingListError::score_not_finite))
    return Status::invalid_argument(argument, concat("unknown routing-list check code ", check.code, " at entry ",
                                                     check.entry));
  return Status::invalid_argument(argument,
                                  concat(to_string(RoutingListError(check.code)), " at entry ", check.entry));
}

}  // namespace sonicmoe
