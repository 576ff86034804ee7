// src/routing/token_rounding.cu — token rounding on the GPU (DESIGN.md §3, kernel R's TR variant):
// router logits [T, E] -> a general routing list in flat order (by token, then expert) whose
// per-expert counts are multiples of tile_m, its length written to a device int64. No host sync.
//
// Exactly the CPU reference's rules (src/reference/routing_reference.cpp,
// token_rounding_entries): start from top-K; per expert with count f, over = f % M and
// missing = M - over; pad when mode == up, or nearest with missing < over (a tie drops); pad
// only when at least `missing` tokens are outside the expert, else drop. Padding takes the
// expert's non-member tokens of highest full-softmax probability p (ties: lower token), score p;
// dropping removes the members of lowest top-K score (ties: higher token).
//
// Five launches, all deterministic (integer shared-memory atomics only build histograms):
//   1. topk_rows       warp per token: top-K, its softmax (double), the row's max and full-softmax
//                      sum (double, the reference's order); a state byte per (token, expert):
//                      0 = not routed, k+1 = top-K rank k, 0xff = padded.
//   2. round_expert    block per expert: counts its column, then selects the `over` members to
//                      drop or the `missing` non-members to pad with an exact radix select on
//                      64-bit keys (the double's bits; complemented for padding so that "smallest
//                      key first" serves both), 11-bit digits, stopping as soon as the boundary
//                      bucket is taken whole. Equal keys are split by token order with a
//                      block-wide scan, so the reference's tie rules hold exactly.
//   3. count_tiles     per token its routed count, exclusive scan inside tiles of 1024 tokens.
//   4. scan_tiles      one block: exclusive scan of the tile sums, total -> *num_routed.
//   5. emit            warp per token: entries by expert order at the token's offset.
// Scores are float(double): top-K softmax for top-K members, p for padded ones, the same
// expressions as the reference, so the list equals the reference's up to the last bit of exp().
//
// Cost note: the selection re-reads its expert's column once per radix pass (at most 6 passes,
// usually 2-3) and, when padding, re-evaluates p (one double exp) per candidate per pass; the
// column is strided by E bytes. Fine for a training-only router next to the expert GEMMs; a
// transposed state and cached keys are the next step if it shows in a profile.
//
// Non-finite logits: see topk_softmax.cu (NaN ranks last; indices and writes stay in bounds).
#include <cstdint>
#include <string>
#include <type_traits>

#include "core/device_checks.h"
#include "core/validate.h"
#include "routing/routing_device.cuh"
#include "sonicmoe/gpu_routing.h"

namespace sonicmoe {
namespace {

using detail::concat;
using namespace routing::device;

constexpr uint8_t kNotRouted = 0;
constexpr uint8_t kPadded = 0xff;  // top-K members hold rank + 1 in 1..32

constexpr int kRowWarpsPerBlock = 4;   // topk_rows, emit: one warp per token
constexpr int kTileTokens = 1024;      // count_tiles: tokens per block, one per thread
constexpr int kScanThreads = 1024;     // scan_tiles
// round_expert: 1024 threads (each owns 2 of the 2048 histogram bins: 8 KiB of shared memory);
// launch bounds cap registers at 64, enough for the double exp of the padding keys.
constexpr int kSelectThreads = 1024;
constexpr int kRadixBits = 11;
constexpr int kRadixBins = 1 << kRadixBits;
static_assert(kRadixBins == 2 * kSelectThreads, "round_expert scans two bins per thread");

constexpr int64_t kWorkspaceAlignment = 256;

// The workspace, carved in one fixed order (sizing and use share this function).
struct RoundingWorkspace {
  uint8_t* state = nullptr;        // [T, E] 0 / rank+1 / kPadded
  double* topk_score = nullptr;    // [T, K] top-K softmax in double
  float* row_max = nullptr;        // [T] the largest logit of the row
  double* row_sum = nullptr;       // [T] sum_e exp(l_e - max), expert order
  int32_t* local_offset = nullptr; // [T] exclusive count offset inside the token's tile
  int32_t* tile_sum = nullptr;     // [tiles] routed entries per tile of kTileTokens tokens
  int64_t* tile_offset = nullptr;  // [tiles] exclusive prefix of tile_sum
};

int64_t num_tiles(int64_t num_tokens) { return (num_tokens + kTileTokens - 1) / kTileTokens; }

// base == nullptr: sizing only. Returns the bytes used.
int64_t carve_workspace(void* base, int64_t T, int64_t E, int64_t K, RoundingWorkspace* ws) {
  int64_t offset = 0;
  auto take = [&](auto*& pointer, int64_t count) {
    using Element = std::remove_reference_t<decltype(*pointer)>;
    offset = (offset + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
    pointer = base ? reinterpret_cast<Element*>(static_cast<char*>(base) + offset) : nullptr;
    offset += count * int64_t(sizeof(Element));
  };
  RoundingWorkspace local;
  RoundingWorkspace& w = ws ? *ws : local;
  take(w.state, T * E);
  take(w.topk_score, T * K);
  take(w.row_max, T);
  take(w.row_sum, T);
  take(w.local_offset, T);
  take(w.tile_sum, num_tiles(T));
  take(w.tile_offset, num_tiles(T));
  return (offset + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
}

// ---- 1. top-K rows ----------------------------------------------------------------------------
template <int kItems>
__global__ void __launch_bounds__(kRowWarpsPerBlock* kWarpSize)
    topk_rows_kernel(const float* __restrict__ logits, int64_t num_tokens, int num_experts, int top_k,
                     RoundingWorkspace ws) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t t = int64_t(blockIdx.x) * kRowWarpsPerBlock + int64_t(threadIdx.x) / kWarpSize;
  if (t >= num_tokens) return;  // uniform over the warp
  const float* row = logits + t * num_experts;
  int expert;
  float logit;
  uint8_t rank[kItems];
  warp_top_k<kItems>(row, num_experts, top_k, lane, expert, logit, rank);
  const double score = warp_top_k_softmax(logit, top_k, lane);
  if (lane < top_k) ws.topk_score[t * top_k + lane] = score;
  const float top = __shfl_sync(kFullMask, logit, 0);
  const double sum = warp_full_softmax_sum(row, num_experts, top, lane);
  if (lane == 0) {
    ws.row_max[t] = top;
    ws.row_sum[t] = sum;
  }
  uint8_t* state = ws.state + t * num_experts;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = lane + kWarpSize * i;
    if (e < num_experts) state[e] = rank[i];
  }
}

// ---- 2. per-expert rounding ---------------------------------------------------------------------
struct RoundArgs {
  const float* logits;
  int64_t num_tokens;
  int num_experts;
  int top_k;
  int tile_m;
  RoundingMode mode;
  RoundingWorkspace ws;
};

// Whether token t is a candidate of expert e (a non-member when padding, a member when
// dropping) and its selection key: the candidates with the smallest keys are taken first.
// Padding: the highest p first -> the complemented bits of p (p >= 0, so its bits order as it
// does). Dropping: the lowest top-K score first -> the score's bits.
__device__ __forceinline__ bool candidate_key(const RoundArgs& a, int64_t t, int e, bool pad, uint64_t& key) {
  const int64_t cell = t * a.num_experts + e;
  const uint8_t s = a.ws.state[cell];
  if (pad) {
    if (s != kNotRouted) return false;
    const double p = full_softmax_probability(__ldg(a.logits + cell), a.ws.row_max[t], a.ws.row_sum[t]);
    key = ~uint64_t(__double_as_longlong(p));
    return true;
  }
  if (s == kNotRouted || s > a.top_k) return false;  // before this kernel's writes: 0 or 1..K only
  key = uint64_t(__double_as_longlong(a.ws.topk_score[t * a.top_k + (s - 1)]));
  return true;
}

__global__ void __launch_bounds__(kSelectThreads) round_expert_kernel(RoundArgs a) {
  __shared__ int hist[kRadixBins];
  __shared__ int warp_sums[32];
  __shared__ int found[3];  // bin, candidates below it, candidates in it
  const int e = int(blockIdx.x);
  const int tid = int(threadIdx.x);
  const int64_t T = a.num_tokens;

  // Top-K members of this expert. Each block reads and writes only its own column.
  int local = 0;
  for (int64_t t = tid; t < T; t += kSelectThreads) local += a.ws.state[t * a.num_experts + e] != kNotRouted;
  int members;
  block_exclusive_sum(local, warp_sums, members);

  const int over = members % a.tile_m;
  if (over == 0) return;  // uniform over the block
  const int missing = a.tile_m - over;
  bool pad = a.mode == RoundingMode::up || (a.mode == RoundingMode::nearest && missing < over);
  if (pad && T - members < missing) pad = false;  // too few tokens outside the expert: drop

  // Radix select of the `remaining` smallest keys: after each pass `prefix` under `mask` names
  // the bucket holding the boundary; keys below it are taken, `remaining` more come from it.
  int remaining = pad ? missing : over;  // 1 <= remaining <= number of candidates
  int count_eq = 0;
  uint64_t prefix = 0, mask = 0;
  for (int bits_left = 64; bits_left > 0;) {
    const int bits = bits_left < kRadixBits ? bits_left : kRadixBits;
    const int shift = bits_left - bits;
    const uint64_t digit_mask = (uint64_t(1) << bits) - 1;
    for (int i = tid; i < kRadixBins; i += kSelectThreads) hist[i] = 0;
    if (tid == 0) found[0] = found[1] = found[2] = 0;
    __syncthreads();
    for (int64_t t = tid; t < T; t += kSelectThreads) {
      uint64_t key;
      if (candidate_key(a, t, e, pad, key) && (key & mask) == prefix)
        atomicAdd(&hist[int((key >> shift) & digit_mask)], 1);
    }
    __syncthreads();
    const int h0 = hist[2 * tid], h1 = hist[2 * tid + 1];
    int total;
    const int below = block_exclusive_sum(h0 + h1, warp_sums, total);
    // Exactly one bin has (candidates below it) < remaining <= (candidates up to and in it).
    if (below < remaining && below + h0 >= remaining) {
      found[0] = 2 * tid;
      found[1] = below;
      found[2] = h0;
    } else if (below + h0 < remaining && below + h0 + h1 >= remaining) {
      found[0] = 2 * tid + 1;
      found[1] = below + h0;
      found[2] = h1;
    }
    __syncthreads();
    prefix |= uint64_t(found[0]) << shift;
    mask |= digit_mask << shift;
    remaining -= found[1];
    count_eq = found[2];
    bits_left = shift;
    __syncthreads();  // found and hist are rewritten by the next pass
    if (remaining == count_eq) break;  // the whole boundary bucket is taken: no finer pass needed
  }

  // Mark: keys below the boundary, and `remaining` of the boundary bucket in token order — the
  // lowest tokens when padding, the highest when dropping (the reference's tie rules).
  int carry = 0;
  for (int64_t base = 0; base < T; base += kSelectThreads) {
    const int64_t t = base + tid;
    bool below = false, equal = false;
    uint64_t key;
    if (t < T && candidate_key(a, t, e, pad, key)) {
      below = (key & mask) < prefix;
      equal = (key & mask) == prefix;
    }
    int chunk_equal;
    const int rank = carry + block_exclusive_sum(equal ? 1 : 0, warp_sums, chunk_equal);
    const bool take = below || (equal && (pad ? rank < remaining : rank >= count_eq - remaining));
    if (take) a.ws.state[t * a.num_experts + e] = pad ? kPadded : kNotRouted;
    carry += chunk_equal;
  }
}

// ---- 3. per-token counts, scanned inside tiles ---------------------------------------------------
__global__ void __launch_bounds__(kTileTokens)
    count_tiles_kernel(int64_t num_tokens, int num_experts, RoundingWorkspace ws) {
  __shared__ int counts[kTileTokens];
  __shared__ int warp_sums[32];
  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  const int64_t tile_base = int64_t(blockIdx.x) * kTileTokens;
  // Warp w counts tokens w*32 .. w*32+31 of the tile, one row at a time (coalesced bytes).
  for (int j = 0; j < kWarpSize; ++j) {
    const int slot = warp * kWarpSize + j;
    const int64_t t = tile_base + slot;
    int count = 0;
    if (t < num_tokens) {  // uniform over the warp
      const uint8_t* row = ws.state + t * num_experts;
      for (int base = 0; base < num_experts; base += kWarpSize) {
        const int e = base + lane;
        count += __popc(__ballot_sync(kFullMask, e < num_experts && row[e] != kNotRouted));
      }
    }
    if (lane == 0) counts[slot] = count;
  }
  __syncthreads();
  int total;
  const int offset = block_exclusive_sum(counts[threadIdx.x], warp_sums, total);
  const int64_t t = tile_base + threadIdx.x;
  if (t < num_tokens) ws.local_offset[t] = offset;
  if (threadIdx.x == 0) ws.tile_sum[blockIdx.x] = total;
}

// ---- 4. scan of the tile sums; the list length ----------------------------------------------------
__global__ void __launch_bounds__(kScanThreads)
    scan_tiles_kernel(int64_t tiles, RoundingWorkspace ws, int64_t* __restrict__ num_routed) {
  __shared__ int warp_sums[32];
  int64_t carry = 0;
  for (int64_t base = 0; base < tiles; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    int total;
    // Partial sums fit int: the grand total is at most the capacity, which fits int32.
    const int offset = block_exclusive_sum(i < tiles ? ws.tile_sum[i] : 0, warp_sums, total);
    if (i < tiles) ws.tile_offset[i] = carry + offset;
    carry += total;
  }
  if (threadIdx.x == 0) *num_routed = carry;
}

// ---- 5. the list ------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kRowWarpsPerBlock* kWarpSize)
    emit_kernel(const float* __restrict__ logits, int64_t num_tokens, int num_experts, int top_k,
                RoundingWorkspace ws, int64_t capacity, int32_t* __restrict__ token_idx,
                int32_t* __restrict__ expert_idx, float* __restrict__ scores) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t t = int64_t(blockIdx.x) * kRowWarpsPerBlock + int64_t(threadIdx.x) / kWarpSize;
  if (t >= num_tokens) return;  // uniform over the warp
  const uint8_t* row = ws.state + t * num_experts;
  int64_t position = ws.tile_offset[t / kTileTokens] + ws.local_offset[t];
  const float top = ws.row_max[t];
  const double sum = ws.row_sum[t];
  const unsigned lanes_below = (1u << lane) - 1u;
  for (int base = 0; base < num_experts; base += kWarpSize) {
    const int e = base + lane;
    const uint8_t s = e < num_experts ? row[e] : kNotRouted;
    const unsigned routed = __ballot_sync(kFullMask, s != kNotRouted);
    if (s != kNotRouted) {
      const int64_t i = position + __popc(routed & lanes_below);
      if (i < capacity) {  // always true (capacity >= the rounding bound); kept for memory safety
        float score = __int_as_float(0x7fc00000);  // NaN: unreachable state value
        if (s == kPadded)
          score = float(full_softmax_probability(__ldg(logits + t * num_experts + e), top, sum));
        else if (s <= top_k)
          score = float(ws.topk_score[t * top_k + (s - 1)]);
        token_idx[i] = int32_t(t);
        expert_idx[i] = e;
        scores[i] = score;
      }
    }
    position += __popc(routed);
  }
}

using detail::cuda_status;

Status validate_gpu_token_rounding(const TokenRoundingParams& p, const void* workspace, int64_t workspace_bytes) {
  SONICMOE_RETURN_IF_ERROR(detail::validate_token_rounding_params(p));
  SONICMOE_RETURN_IF_ERROR(check_router_limits(p.num_experts, p.top_k, "GPU token rounding"));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.logits, "logits", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.token_idx, "token_idx", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.expert_idx, "expert_idx", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.scores, "scores", 4));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(p.num_routed, "num_routed", 8));
  const int64_t need = token_rounding_workspace_bytes(p.num_tokens, p.num_experts, p.top_k);
  if (workspace_bytes < need)
    return Status::invalid_argument(
        "workspace_bytes", concat("must be >= token_rounding_workspace_bytes(T, E, K) = ", need, " (got ",
                                  workspace_bytes, ")"));
  SONICMOE_RETURN_IF_ERROR(detail::check_not_null(workspace, "workspace"));
  SONICMOE_RETURN_IF_ERROR(detail::require_aligned(workspace, "workspace", 16));
  return {};
}

template <int kItems>
void launch_topk_rows(const TokenRoundingParams& p, const RoundingWorkspace& ws, cudaStream_t stream) {
  const int64_t blocks = (p.num_tokens + kRowWarpsPerBlock - 1) / kRowWarpsPerBlock;
  topk_rows_kernel<kItems><<<dim3(unsigned(blocks)), kRowWarpsPerBlock * kWarpSize, 0, stream>>>(
      p.logits, p.num_tokens, int(p.num_experts), int(p.top_k), ws);
}

}  // namespace

int64_t token_rounding_workspace_bytes(int64_t num_tokens, int64_t num_experts, int64_t top_k) {
  if (num_tokens <= 0 || num_experts <= 0 || top_k <= 0) return 0;
  return carve_workspace(nullptr, num_tokens, num_experts, top_k, nullptr);
}

Status route_token_rounding(const TokenRoundingParams& params, void* workspace, int64_t workspace_bytes,
                            cudaStream_t stream) {
  SONICMOE_RETURN_IF_ERROR(validate_gpu_token_rounding(params, workspace, workspace_bytes));
  const TokenRoundingParams& p = params;
  RoundingWorkspace ws;
  carve_workspace(workspace, p.num_tokens, p.num_experts, p.top_k, &ws);

  switch (items_per_lane(p.num_experts)) {
    case 1: launch_topk_rows<1>(p, ws, stream); break;
    case 2: launch_topk_rows<2>(p, ws, stream); break;
    case 4: launch_topk_rows<4>(p, ws, stream); break;
    case 8: launch_topk_rows<8>(p, ws, stream); break;
    case 16: launch_topk_rows<16>(p, ws, stream); break;
    default: launch_topk_rows<32>(p, ws, stream); break;
  }
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "token rounding: topk_rows launch"));

  const RoundArgs round{.logits = p.logits,
                        .num_tokens = p.num_tokens,
                        .num_experts = int(p.num_experts),
                        .top_k = int(p.top_k),
                        .tile_m = p.options.tile_m,
                        .mode = p.options.mode,
                        .ws = ws};
  round_expert_kernel<<<dim3(unsigned(p.num_experts)), kSelectThreads, 0, stream>>>(round);
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "token rounding: round_expert launch"));

  const int64_t tiles = num_tiles(p.num_tokens);
  count_tiles_kernel<<<dim3(unsigned(tiles)), kTileTokens, 0, stream>>>(p.num_tokens, int(p.num_experts), ws);
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "token rounding: count_tiles launch"));
  scan_tiles_kernel<<<1, kScanThreads, 0, stream>>>(tiles, ws, p.num_routed);
  SONICMOE_RETURN_IF_ERROR(cuda_status(cudaGetLastError(), "token rounding: scan_tiles launch"));

  const int64_t row_blocks = (p.num_tokens + kRowWarpsPerBlock - 1) / kRowWarpsPerBlock;
  emit_kernel<<<dim3(unsigned(row_blocks)), kRowWarpsPerBlock * kWarpSize, 0, stream>>>(
      p.logits, p.num_tokens, int(p.num_experts), int(p.top_k), ws, p.capacity, p.token_idx, p.expert_idx,
      p.scores);
  return cuda_status(cudaGetLastError(), "token rounding: emit launch");
}

}  // namespace sonicmoe
