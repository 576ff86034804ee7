// src/gemm/consumer_k_loop_sm90.cuh — the consumer side of the stage ring, shared by both
// mainloops (MainloopSm90TmaGather, varlen M; MainloopSm90CpAsyncVarlenK, varlen K): one output
// tile's k-loop of wgmmas over the stages the producer fills, and the release of each stage.
//
// Per k-tile: wait for the stage's full barrier, issue its wgmma batch, and release the previous
// k-tile's stage on its empty barrier (one arrival per consumer warp) once that batch retired
// (warpgroup_wait<1>): one batch stays in flight while the next is issued. stage / phase persist
// across tiles.
//
// kLend (cooperative TMA-store epilogues, TmaTileStore): the epilogue borrows the tile's last
// stage as output staging. That stage is not released at the end of the k-loop but handed out in
// `*lent`; the next call gives it back after its second k-tile's wgmmas are issued, once the bulk
// stores that read it are done reading: consumer thread 0 issued them (TmaTileStore::commit) and
// waits for them, and the empty barrier completes only with its warp's arrival. So 4 stages fit
// beside a 128x256 output tile; the lent stage is missing from the ring from the end of a tile's
// k-loop to the next tile's second k-tile (also after a tile whose epilogue fell back to register
// stores and staged nothing), and if its stores are still reading then, thread 0's wait holds back
// its warpgroup's next wgmmas. The next tile's first two k-tiles use the two stages after the lent
// one, hence kStages >= 3. A tile without k-tiles (varlen K: an expert without rows) has no stage
// to lend: `*lent` = -1, and its epilogue must not stage.
//
// kFenceGenericWrites: some of the stage was written by cp.async (the generic proxy) and wgmma
// reads through the async proxy, so the two are ordered explicitly (TMA writes through the async
// proxy already).
//
// look_ahead() runs (warp-wide) once the last k-tile's batch is issued, while it executes.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/arch/barrier.h>

namespace sonicmoe::gemm {

// A stage's A and B buffers (kTileM x kTileK and kTileN x kTileK elements), which a borrowing
// epilogue uses as output staging. Both mainloops keep the stage mode outermost.
template <class Element>
struct StageBuffers {
  Element* a;
  Element* b;
};
template <int kAElements, int kBElements, class Element>
__device__ StageBuffers<Element> stage_buffers_at(Element* a, Element* b, int stage) {
  return {a + stage * kAElements, b + stage * kBElements};
}

template <int kStages, bool kLend, bool kFenceGenericWrites, class TiledMma, class FragA, class FragB, class Accum,
          class LookAhead>
__device__ void consume_k_tiles(TiledMma& tiled_mma, FragA const& tCrA, FragB const& tCrB, Accum& accum,
                                uint64_t* full, uint64_t* empty, int k_tiles, int& stage, uint32_t& phase,
                                LookAhead&& look_ahead, int* lent) {
  using namespace cute;
  static_assert(!kLend || kStages >= 3, "the lent stage comes back only after the next tile's second k-tile");
  const bool lane0 = (threadIdx.x & 31) == 0;
  auto give_back = [&] {
    if constexpr (kLend) {
      if (*lent < 0) return;
      if (threadIdx.x == 128) cute::tma_store_wait<0>();  // consumer thread 0: the store issuer
      if (lane0) cutlass::arch::ClusterBarrier::arrive(&empty[*lent]);
      *lent = -1;
    }
  };
  if (k_tiles == 0) {
    look_ahead();
    give_back();
    return;
  }

  // The caller initialised the accumulators (bias or zero; see init_accumulators_with_bias).
  tiled_mma.accumulate_ = GMMA::ScaleOut::One;
  int release_stage = stage;
  warpgroup_fence_operand(accum);
  for (int kt = 0; kt < k_tiles; ++kt) {
    cutlass::arch::ClusterTransactionBarrier::wait(&full[stage], phase);
    if constexpr (kFenceGenericWrites) cutlass::arch::fence_view_async_shared();
    warpgroup_fence_operand(accum);
    warpgroup_arrive();
#pragma unroll
    for (int kb = 0; kb < size<2>(tCrA); ++kb) {
      cute::gemm(tiled_mma, tCrA(_, _, kb, stage), tCrB(_, _, kb, stage), accum);
    }
    warpgroup_commit_batch();
    warpgroup_fence_operand(accum);
    if (kt > 0) {
      warpgroup_wait<1>();  // the previous k-tile's batch has retired: its stage is free
      if (lane0) cutlass::arch::ClusterBarrier::arrive(&empty[release_stage]);
      release_stage = release_stage + 1 == kStages ? 0 : release_stage + 1;
      if (kt == 1) give_back();
    }
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
  look_ahead();
  warpgroup_wait<0>();
  warpgroup_fence_operand(accum);
  if constexpr (kLend) {
    give_back();  // a single k-tile
    *lent = release_stage;
  } else {
    if (lane0) cutlass::arch::ClusterBarrier::arrive(&empty[release_stage]);
  }
}

}  // namespace sonicmoe::gemm
