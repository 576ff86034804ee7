// src/gemm/mainloop_sm90_cpasync_varlen_k.cuh — mainloop of the weight-gradient GEMMs (varlen K):
//   C_e[m, n] = Σ_{rows r of e} L[lrow(r), m] · R[rrow(r), n]
// where lrow/rrow are the grouped row itself or gather_idx[r] (token order). dW2 = dOᵀ·(s·A) has
// L = dO gathered, R = s·A; dW1 = dHᵀ·x has L = dH, R = x gathered.
//
// Both operands are MN-major in shared memory (a gathered row contributes 8 consecutive M or N
// values per 16-byte chunk) and both are loaded by cp.async: the reduction runs along rows, and
// rows past the expert's end must read as zeros — a row of the next expert would otherwise leak
// into this expert's sum (and NaN·0 is not 0). TMA for the contiguous operand (with per-expert
// bounds) is the planned speed step; this version is the correct one.
//
// Producer warpgroup: every thread issues its 16-byte copies of the stage (zero-filled outside
// the expert and past M/N) and commits them with cp.async.mbarrier.arrive.noinc on the stage's
// full barrier (arrival count = 128). Consumers as in the varlen-M mainloop.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>

#include "gemm/scheduler_varlen_k.cuh"

namespace sonicmoe::gemm {

template <class Cfg>
struct MainloopSm90CpAsyncVarlenK {
  using Element = cutlass::bfloat16_t;
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;
  static constexpr int kTileK = Cfg::kTileK;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kConsumerWarps = Cfg::kConsumerWarpgroups * 4;
  static constexpr int kProducerThreads = 128;

  using TileM = cute::Int<kTileM>;
  using TileN = cute::Int<kTileN>;
  using TileK = cute::Int<kTileK>;
  using StagesC = cute::Int<kStages>;

  // MN-major 128-byte swizzle atoms (64 M-or-N values x 8 K values).
  using SmemLayoutAtom = cute::GMMA::Layout_MN_SW128_Atom<Element>;
  using SmemLayoutA = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<TileM, TileK, StagesC>{}));
  using SmemLayoutB = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<TileN, TileK, StagesC>{}));

  using TiledMma = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, TileN, TileK>,
                                 cute::GMMA::Major::MN, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::Int<Cfg::kConsumerWarpgroups>, cute::_1, cute::_1>>{}));
  static_assert(kTileM == 64 * Cfg::kConsumerWarpgroups, "one m64 wgmma row block per consumer warpgroup");

  // Copy mapping: a warp covers whole 256-byte row segments (coalesced reads, conflict-free
  // swizzled writes). A: 16 chunks along M x 8 rows per pass; B: 32 chunks along N x 4 rows.
  static constexpr int kChunksA = kTileM / 8, kRowsPerPassA = kProducerThreads / kChunksA;
  static constexpr int kChunksB = kTileN / 8, kRowsPerPassB = kProducerThreads / kChunksB;
  static constexpr int kPassesA = kTileK / kRowsPerPassA, kPassesB = kTileK / kRowsPerPassB;
  static_assert(kProducerThreads % kChunksA == 0 && kProducerThreads % kChunksB == 0, "copy mapping");

  struct alignas(1024) SharedStorage {
    alignas(1024) Element a[cute::cosize_v<SmemLayoutA>];
    alignas(1024) Element b[cute::cosize_v<SmemLayoutB>];
    alignas(8) uint64_t full[kStages];
    alignas(8) uint64_t empty[kStages];
  };

  struct Operand {
    const Element* ptr;         // [rows or tokens, width]
    int64_t ld;                 // elements between rows
    const int32_t* gather_idx;  // grouped row -> row of ptr; nullptr = the grouped row itself
    int64_t rows;               // rows of ptr (bound for gathered indices)
  };

  struct Args {
    Operand left;   // width m
    Operand right;  // width n
    int m, n;
  };

  __device__ static void init_barriers(SharedStorage& ss) {
    for (int s = 0; s < kStages; ++s) {
      cutlass::arch::ClusterBarrier::init(&ss.full[s], kProducerThreads);
      cutlass::arch::ClusterBarrier::init(&ss.empty[s], kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }

  __device__ static int k_tiles(VarlenKWorkTile const& work) { return (work.rows + kTileK - 1) / kTileK; }

  __device__ static void cp_async_16_zfill(uint32_t smem_addr, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(src_bytes)
                 : "memory");
  }

  // Source row of reduction slot `slot` of the tile, or nullptr when the slot is past the
  // expert's rows (or the index is out of range).
  __device__ static const Element* source_row(Operand const& op, VarlenKWorkTile const& work, int slot) {
    if (slot >= work.rows) return nullptr;
    const int64_t grouped_row = int64_t(work.row_start) + slot;
    const int64_t row = op.gather_idx ? int64_t(__ldg(op.gather_idx + grouped_row)) : grouped_row;
    if (row < 0 || row >= op.rows) return nullptr;
    return op.ptr + row * op.ld;
  }

  template <class Scheduler>
  __device__ static void produce(Args const& args, SharedStorage& ss, Scheduler const& sched) {
    using namespace cute;
    const int t = threadIdx.x % kProducerThreads;
    const int chunk_a = t % kChunksA, row0_a = t / kChunksA;
    const int chunk_b = t % kChunksB, row0_b = t / kChunksB;
    // Shared-memory addresses are recomputed per copy from the swizzled layout: keeping 24 of
    // them live would not fit the producer's 56 registers.
    Tensor sA = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(ss.b), SmemLayoutB{});

    int stage = 0;
    uint32_t phase = 1;  // fresh empty barriers: waiting on parity 1 passes at once
    for (int tile = blockIdx.x;; tile += gridDim.x) {
      VarlenKWorkTile work;
      if (!sched.find(tile, work)) break;
      const int col_a = work.m_block * kTileM + chunk_a * 8;
      const int col_b = work.n_block * kTileN + chunk_b * 8;
      const bool col_a_ok = col_a < args.m, col_b_ok = col_b < args.n;
      const int tiles = k_tiles(work);
      for (int kt = 0; kt < tiles; ++kt) {
        cutlass::arch::ClusterBarrier::wait(&ss.empty[stage], phase);
#pragma unroll
        for (int p = 0; p < kPassesA; ++p) {
          const Element* row = col_a_ok ? source_row(args.left, work, kt * kTileK + row0_a + p * kRowsPerPassA) : nullptr;
          cp_async_16_zfill(cast_smem_ptr_to_uint(&sA(chunk_a * 8, row0_a + p * kRowsPerPassA, stage)),
                            row ? row + col_a : args.left.ptr, row ? 16 : 0);
        }
#pragma unroll
        for (int p = 0; p < kPassesB; ++p) {
          const Element* row = col_b_ok ? source_row(args.right, work, kt * kTileK + row0_b + p * kRowsPerPassB) : nullptr;
          cp_async_16_zfill(cast_smem_ptr_to_uint(&sB(chunk_b * 8, row0_b + p * kRowsPerPassB, stage)),
                            row ? row + col_b : args.right.ptr, row ? 16 : 0);
        }
        cutlass::arch::cpasync_barrier_arrive_noinc(&ss.full[stage]);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
    cute::cp_async_wait<0>();
  }

  // One output tile's reduction into `accum`. With no rows nothing is issued and `accum` is left
  // as it was: the epilogue writes zeros for such tiles (touching the accumulators outside the
  // wgmma flow would make ptxas serialise it).
  template <class ThrMma, class Accum>
  __device__ static void mma(TiledMma& tiled_mma, ThrMma const& thr_mma, Accum& accum, SharedStorage& ss,
                             int tiles, int& stage, uint32_t& phase) {
    using namespace cute;
    Tensor sA = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(ss.b), SmemLayoutB{});
    Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(sA));  // smem descriptors
    Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(sB));
    const bool lane0 = (threadIdx.x & 31) == 0;
    if (tiles == 0) return;
    tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
    int release_stage = stage;
    warpgroup_fence_operand(accum);
    for (int kt = 0; kt < tiles; ++kt) {
      cutlass::arch::ClusterBarrier::wait(&ss.full[stage], phase);
      // cp.async wrote through the generic proxy; wgmma reads through the async proxy.
      cutlass::arch::fence_view_async_shared();
      warpgroup_fence_operand(accum);
      warpgroup_arrive();
#pragma unroll
      for (int kb = 0; kb < size<2>(tCrA); ++kb) {
        cute::gemm(tiled_mma, tCrA(_, _, kb, stage), tCrB(_, _, kb, stage), accum);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_fence_operand(accum);
      if (kt > 0) {
        warpgroup_wait<1>();
        if (lane0) cutlass::arch::ClusterBarrier::arrive(&ss.empty[release_stage]);
        release_stage = release_stage + 1 == kStages ? 0 : release_stage + 1;
      }
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    warpgroup_wait<0>();
    warpgroup_fence_operand(accum);
    if (lane0) cutlass::arch::ClusterBarrier::arrive(&ss.empty[release_stage]);
  }
};

}  // namespace sonicmoe::gemm
