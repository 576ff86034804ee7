// src/gemm/tile_config.h — the tile shapes and pipeline depths of the sm_90a grouped GEMM
// skeleton, one place for every tuned constant and the budget that decided it.
//
// Dataflow position: read by kernel_sm90_grouped.cuh (device) and launch_sm90_grouped.cuh
// (host: shared-memory size, grid size). One configuration per role below; dH picks one of two
// per call by the hidden size. What else was measured (ping-pong and 128-row ping-pong tiles for
// the plain GEMMs, 2-CTA clusters): docs/performance.md.
#pragma once

#include <cstdint>

namespace sonicmoe::gemm {

// One cooperative configuration: a CTA computes a 128 x 256 output tile with two consumer
// warpgroups (64 rows each, wgmma m64n256k16) and one producer warpgroup.
//
// Shared memory per stage: A 128x64 bf16 = 16 KiB + B 256x64 bf16 = 32 KiB = 48 KiB, of the
// 227 KiB a CTA may use on sm_90 (+64 B of barriers, +1 KiB alignment slack): 4 stages = 192 KiB.
// The TMA-store epilogues (H of up-proj, Y of down-proj, dX̃, dW2, dW1) stage their 128x256 bf16
// output tile (64 KiB) in the buffers of the tile's last stage (48 KiB, lent until the next
// tile's second k-tile) plus 16 KiB of their own: 208 KiB (+ barriers, padded to 1 KiB). Overlapping a
// tile's store with the next tile's wgmmas measured worth more than a 4th stage when they
// competed for the room (H200,
// (T,d,n,E,K) = (24576,1536,256,128,8)): down-proj 217 -> 409-429 TFLOPS, up-proj 433-436
// (4 stages, register stores) -> 497 (3 stages, H by TMA store, A from registers). Borrowing the
// stage gives both. Against 3 stages + a 64 KiB staging tile (same call, H200, 2026-11-28; 7B /
// 30B n=512 / n=1024): alone 0.98-1.02x; with the next tile looked up during the last wgmma
// batch (kernel_sm90_grouped.cuh) up-proj 1.05 / 0.99 / 1.01x, down-proj 1.04 / 1.06 / 1.03x,
// dX̃ 1.05 / 1.03 / 1.02x.
//   Rejected by measurement: staging the tile in two 128-column halves through one 32 KiB
//   buffer to fit 4 stages + TMA store (224 KiB): the second half waited for the first half's
//   store inside the epilogue, and the roles got slower (H200, same call):
//   up-proj 502 -> 503 / 577 -> 566, down-proj 409 -> 397 / 495 -> 448, dX̃ 543 -> 498 /
//   571 -> 540 TFLOPS at (24576,1536,256,128,8) / (32768,4096,512,128,8).
//
// Registers (65536 per SM, one CTA of 384 threads per SM): the producer warpgroup drops to
// 56 (it holds 8 gathered row pointers = 16 registers plus loop state), the consumers rise to
// 224: 128 fp32 accumulators per thread + epilogue temporaries.
// 56*128 + 224*256 = 64512 <= 65536. setmaxnreg only moves registers inside the CTA's launch
// allocation (384 threads x 168 = 64512): a split that sums to more (80/216 = 65536 was tried)
// makes the consumers' setmaxnreg.inc wait forever — the kernel hangs (seen on an H200).
// ptxas -v reports "168 registers" (the launch-bounds figure, 65536/384), but it allocates each
// side of setmaxnreg to its own count: the consumer code of the dH kernel uses up to R203
// (scripts/sass.sh), and the producer must fit in 56 (it spilled when it did not).
//
// Both schedules share one shape of the CTA (a producer warpgroup and two consumer warpgroups,
// N = 256, K = 64 per stage); they differ in how many warpgroups share a tile.
// Also measured slower for every role (H200, same call as main, 2026-11-28): K = 32 per stage
// with twice the stages in the same shared memory, 0.88-1.01x; staggering the two cooperative
// warpgroups by a k-tile so that their epilogues alternate, 0.98-1.01x (docs/performance.md).
template <bool kPingPongT, int kStagesT>
struct TileConfigSm90 {
  static constexpr bool kPingPong = kPingPongT;
  static constexpr int kMmaWarpgroups = kPingPong ? 1 : 2;  // warpgroups sharing one tile
  static constexpr int kTileM = 64 * kMmaWarpgroups;        // one m64 wgmma row block each
  static constexpr int kTileN = 256;
  static constexpr int kTileK = 64;  // one 128-byte swizzle atom of bf16 along K
  static constexpr int kStages = kStagesT;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
  static constexpr int kProducerRegisters = 56;
  static constexpr int kConsumerRegisters = 224;
  // cp.async gather of A: 16-byte chunks, 8 per 64-element row slice; 128 producer threads
  // cover 16 rows per pass, kTileM / 16 passes per tile.
  static constexpr int kChunksPerRow = kTileK / 8;
  static constexpr int kRowsPerPass = 128 / kChunksPerRow;
  static constexpr int kPasses = kTileM / kRowsPerPass;
};

// Cooperative: the two consumer warpgroups split one 128 x 256 tile along M.
template <int kStagesT>
using TileConfig128x256 = TileConfigSm90<false, kStagesT>;

// Ping-pong: each consumer warpgroup owns a whole 64 x 256 tile (wgmma m64n256k16, the same 128
// accumulators per thread as above) and the two take alternate tiles of the CTA's sequence, so
// one warpgroup's epilogue runs while the other's wgmmas keep the tensor cores busy. For an
// epilogue that is long next to its mainloop (dH: loads H, writes dH, s·A and dS partials).
// Shared memory per stage: A 64x64 = 8 KiB + B 256x64 = 32 KiB = 40 KiB; 5 stages = 200 KiB
// (register-store epilogues only: the two warpgroups cannot share one output staging tile).
// B is loaded once per 64 rows instead of 128: twice the L2 -> SM traffic of the cooperative tile
// for the weight operand.
template <int kStagesT>
using TileConfigPingPong64x256 = TileConfigSm90<true, kStagesT>;

// The configuration each role uses today.
using UpProjTile = TileConfig128x256<4>;
// down-proj and dX̃ measured slower (H200, same call as this tile, 2026-11-28; 7B / 30B n=512 /
// n=1024): cooperative 256x128 (cuBLAS's dense tile) 0.89-0.98x; 4 stages with register stores
// instead of 3 + the TMA-store staging 0.54-0.85x; ping-pong tiles and 2-CTA clusters 0.74-1.00x
// (clusters again on today's 4 stages with the borrowed staging: 0.92-1.00x; on the m-fastest
// tile order, timed at the steady power-limited clock: 0.96-0.99x, 2026-11-29).
using DownProjTile = TileConfig128x256<4>;
using UpProjInputGradTile = TileConfig128x256<4>;
// dH: two tiles, chosen by the length of the k-loop (hidden). Its epilogue (load H, write dH,
// s·A, partial dS from registers) is long: with a short k-loop ping-pong hides it behind the
// other warpgroup's wgmmas (7B, d = 1536: ping-pong 406, cooperative 386 TFLOPS; the first
// cooperative epilogue ran at 209-212). With a long k-loop the epilogue is a small part of a tile
// and the weight traffic counts more: the cooperative tile reads W2 once per 128 rows instead of
// per 64 (d = 4096, n = 1024: ping-pong 435, cooperative 521). H200, same call, 2026-11-28. The
// threshold lies between the measured d = 1536 and d = 4096.
// Also measured slower for dH: ping-pong 128x128 per warpgroup (SonicMoE's dH tile) 0.90-0.98x;
// the cooperative tile with 3 stages and half of H staged in shared memory 0.94-0.99x (its
// cp.async gather of dO then starves the k-loop: ncu, full-barrier waits 6.5% -> 30%).
using DownProjActGradTilePingPong = TileConfigPingPong64x256<5>;
using DownProjActGradTileCooperative = TileConfig128x256<4>;
inline constexpr int64_t kDownProjActGradCooperativeMinHidden = 3072;
static_assert(DownProjActGradTilePingPong::kTileN == DownProjActGradTileCooperative::kTileN,
              "the dS partial columns (one per N tile) must not depend on the choice");
// dW1, dW2: 4 stages, and the tile stored by TMA from the lent last stage + 16 KiB (208 KiB), as
// for the TMA-store roles above. The reduction runs over an expert's rows (hundreds to
// thousands), so pipeline depth matters more than a staging buffer of its own; borrowing the
// stage gives both. Against register stores on 4 stages (same call, H200, 2026-11-28; 7B / 30B
// n=512 / n=1024): dW2 1.20 / 1.16 / 1.11x, dW1 1.12 / 1.10 / 1.10x.
using WeightGradTile = TileConfig128x256<4>;

}  // namespace sonicmoe::gemm
