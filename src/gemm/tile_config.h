// src/gemm/tile_config.h — the tile shapes and pipeline depths of the sm_90a grouped GEMM
// skeleton, one place for every tuned constant and the budget that decided it.
//
// Dataflow position: read by kernel_sm90_grouped.cuh (device) and launch_sm90_grouped.cuh
// (host: shared-memory size, grid size). Nothing here is measured yet beyond "fits and is
// correct"; the first version uses one configuration for every role (speed is a later step).
#pragma once

#include <cstdint>

namespace sonicmoe::gemm {

// One cooperative configuration: a CTA computes a 128 x 256 output tile with two consumer
// warpgroups (64 rows each, wgmma m64n256k16) and one producer warpgroup.
//
// Shared memory per stage: A 128x64 bf16 = 16 KiB + B 256x64 bf16 = 32 KiB = 48 KiB, of the
// 227 KiB a CTA may use on sm_90 (+64 B of barriers, +1 KiB alignment slack):
//   4 stages = 192 KiB when the epilogue stores from registers (up-proj: H and A);
//   3 stages = 144 KiB + a 128x256 bf16 output tile (64 KiB) = 208 KiB for the TMA-store
//   epilogue (down-proj, dX̃), whose K loops are short (K = n or 2n), so a deeper pipeline buys
//   less than overlapping the store with the next tile.
//
// Registers (65536 per SM, one CTA of 384 threads per SM): the producer warpgroup drops to
// 56 (it holds 8 gathered row pointers = 16 registers plus loop state), the consumers rise to
// 224: 128 fp32 accumulators per thread + epilogue temporaries.
// 56*128 + 224*256 = 64512 <= 65536.
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
using UpProjTile = TileConfig128x256<4>;
using DownProjTile = TileConfig128x256<3>;
using UpProjInputGradTile = TileConfig128x256<3>;

}  // namespace sonicmoe::gemm
