// src/gemm/tile_config.h — the tile shapes and pipeline depths of the sm_90a grouped GEMM
// skeleton, one place for every tuned constant and the budget that decided it.
//
// Dataflow position: read by kernel_sm90_grouped.cuh (device) and launch_sm90_grouped.cuh
// (host: shared-memory size, grid size). First version: one configuration for every role;
// per-shape tuning (ping-pong, 128x192, clusters) is a later step.
#pragma once

#include <cstdint>

namespace sonicmoe::gemm {

// One cooperative configuration: a CTA computes a 128 x 256 output tile with two consumer
// warpgroups (64 rows each, wgmma m64n256k16) and one producer warpgroup.
//
// Shared memory per stage: A 128x64 bf16 = 16 KiB + B 256x64 bf16 = 32 KiB = 48 KiB, of the
// 227 KiB a CTA may use on sm_90 (+64 B of barriers, +1 KiB alignment slack):
//   3 stages = 144 KiB + a 128x256 bf16 output tile (64 KiB) = 208 KiB for the TMA-store
//   epilogues (H of up-proj, Y of down-proj, dX̃). Overlapping a tile's store with the next
//   tile's wgmmas measured worth more than a 4th stage (H200, (T,d,n,E,K) = (24576,1536,256,
//   128,8)): down-proj 217 -> 409-429 TFLOPS, up-proj 433-436 (4 stages, register stores) ->
//   497 (3 stages, H by TMA store, A from registers).
//   4 stages = 192 KiB fit only with the register-store epilogues (EpilogueStore,
//   EpilogueSwiGLU), which leave no room for the output tile.
//
// Registers (65536 per SM, one CTA of 384 threads per SM): the producer warpgroup drops to
// 56 (it holds 8 gathered row pointers = 16 registers plus loop state), the consumers rise to
// 224: 128 fp32 accumulators per thread + epilogue temporaries.
// 56*128 + 224*256 = 64512 <= 65536. setmaxnreg only moves registers inside the CTA's launch
// allocation (384 threads x 168 = 64512): a split that sums to more (80/216 = 65536 was tried)
// makes the consumers' setmaxnreg.inc wait forever — the kernel hangs (seen on an H200). Caveat seen in ptxas -v: the kernel is still compiled
// under the launch-bounds cap of 168 registers (65536/384), so the consumer path must fit in
// 168 with its 128 accumulators; every epilogue here does, with 0 bytes spilled.
template <int kStagesT>
struct TileConfig128x256 {
  static constexpr int kTileM = 128;
  static constexpr int kTileN = 256;
  static constexpr int kTileK = 64;  // one 128-byte swizzle atom of bf16 along K
  static constexpr int kStages = kStagesT;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
  static constexpr int kProducerRegisters = 56;
  static constexpr int kConsumerRegisters = 224;
  // cp.async gather of A: 16-byte chunks, 8 per 64-element row slice; 128 producer threads
  // cover 16 rows per pass, 8 passes per 128-row tile.
  static constexpr int kChunksPerRow = kTileK / 8;
  static constexpr int kRowsPerPass = 128 / kChunksPerRow;
  static constexpr int kPasses = kTileM / kRowsPerPass;
};

// The configuration each role uses today.
using UpProjTile = TileConfig128x256<3>;
using DownProjTile = TileConfig128x256<3>;
using UpProjInputGradTile = TileConfig128x256<3>;
// dH: 4 stages, epilogue straight from registers — it loads H and writes three tensors per tile,
// so shared memory goes to the pipeline until the epilogue is TMA-staged.
using DownProjActGradTile = TileConfig128x256<4>;
// dW1, dW2: 4 stages (192 KiB) — the reduction runs over an expert's rows (hundreds to
// thousands), so pipeline depth matters more than an output staging buffer.
using WeightGradTile = TileConfig128x256<4>;

}  // namespace sonicmoe::gemm
