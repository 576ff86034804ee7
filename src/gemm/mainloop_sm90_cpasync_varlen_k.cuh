// src/gemm/mainloop_sm90_cpasync_varlen_k.cuh — mainloop of the weight-gradient GEMMs (varlen K):
//   C_e[m, n] = Σ_{rows r of e} L[lrow(r), m] · R[rrow(r), n]
// dW2 = dOᵀ·(s·A): L = dO gathered by gather_idx, R = s·A contiguous in grouped order.
// dW1 = dHᵀ·x:     L = dH contiguous,              R = x gathered.
//
// Both operands are MN-major in shared memory (one gathered row brings 8 consecutive M or N
// values per 16-byte chunk). The gathered operand is loaded by cp.async (TMA cannot gather
// rows). The contiguous one by TMA on every k-tile that lies wholly inside the expert's rows;
// the expert's last, partial k-tile goes through cp.async with zero fill instead, because a TMA
// box would read the next expert's rows into this expert's sum (and 0·Inf is not 0).
//
// A stage's full barrier expects 1 + 128 arrivals: the TMA-issuing thread's arrive-expect-tx
// (a plain arrive on tail tiles) and every producer thread's cp.async.mbarrier.arrive.noinc, so
// it completes when both the TMA bytes and all cp.async copies have landed.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>

#include "gemm/scheduler_varlen_k.cuh"

namespace sonicmoe::gemm {

template <class Cfg, bool kGatherLeft>
struct MainloopSm90CpAsyncVarlenK {
  using Element = cutlass::bfloat16_t;
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;
  static constexpr int kTileK = Cfg::kTileK;
  static constexpr int kStages = Cfg::kStages;
  // Warps that read each stage and arrive on its empty barrier: the warpgroups sharing a tile.
  static constexpr int kConsumerWarps = Cfg::kMmaWarpgroups * 4;
  static constexpr int kProducerThreads = 128;

  using TileM = cute::Int<kTileM>;
  using TileN = cute::Int<kTileN>;
  using TileK = cute::Int<kTileK>;
  using StagesC = cute::Int<kStages>;

  // MN-major 128-byte swizzle atoms (64 M-or-N values x 8 K values), stacked along K first so
  // that a TMA box of 64 x kTileK lands in one contiguous 8 KiB block.
  using SmemLayoutAtom = cute::GMMA::Layout_MN_SW128_Atom<Element>;
  using KFirst = cute::Step<cute::_2, cute::_1, cute::_3>;
  using SmemLayoutA = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<TileM, TileK, StagesC>{}, KFirst{}));
  using SmemLayoutB = decltype(cute::tile_to_shape(SmemLayoutAtom{}, cute::Shape<TileN, TileK, StagesC>{}, KFirst{}));

  using TiledMma = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, TileN, TileK>,
                                 cute::GMMA::Major::MN, cute::GMMA::Major::MN>(),
      cute::Layout<cute::Shape<cute::Int<Cfg::kMmaWarpgroups>, cute::_1, cute::_1>>{}));
  static_assert(kTileM == 64 * Cfg::kMmaWarpgroups, "one m64 wgmma row block per consumer warpgroup");

  // The contiguous operand's side: its tile width and smem layout.
  static constexpr int kContigWidth = kGatherLeft ? kTileN : kTileM;
  using SmemLayoutContig = cute::conditional_t<kGatherLeft, SmemLayoutB, SmemLayoutA>;

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

  // The contiguous operand as TMA sees it: (width, rows), width contiguous.
  static auto make_tma_contig(const Element* ptr, int width, int rows, int64_t ld) {
    using namespace cute;
    auto g = make_tensor(make_gmem_ptr(ptr), make_layout(make_shape(width, rows), make_stride(_1{}, ld)));
    return make_tma_copy(SM90_TMA_LOAD{}, g, SmemLayoutContig{}(_, _, 0),
                         make_shape(Int<kContigWidth>{}, TileK{}), Int<1>{});
  }
  using TmaContig = decltype(make_tma_contig(nullptr, 8, 1, 8));
  static constexpr uint32_t kTmaBytes = uint32_t(kContigWidth * kTileK * sizeof(Element));

  struct Args {
    Operand left;   // width m
    Operand right;  // width n
    int m, n;
    TmaContig tma;  // the contiguous operand (right when kGatherLeft, else left)
  };

  // The skeleton's hooks (kernel_sm90_grouped.cuh): every expert owns the same grid of output
  // tiles; the k-loop runs over the expert's rows (varlen K).
  using Scheduler = VarlenKTileScheduler;
  static constexpr bool kVarlenK = true;
  using Work = VarlenKWorkTile;
  __device__ static Scheduler make_scheduler(Args const& args, const int32_t* offsets, int experts, int rows) {
    return Scheduler{offsets, experts, rows, (args.m + kTileM - 1) / kTileM, (args.n + kTileN - 1) / kTileN};
  }
  __device__ static int k_tiles(Args const&, Work const& work) { return (work.rows + kTileK - 1) / kTileK; }
  __device__ static void prefetch(Args const& args) { cute::prefetch_tma_descriptor(args.tma.get_tma_descriptor()); }
  static int64_t max_tiles(Args const& args, int64_t /*rows*/, int64_t experts) {
    return experts * ((args.m + kTileM - 1) / kTileM) * ((args.n + kTileN - 1) / kTileN);
  }

  __device__ static void init_barriers(SharedStorage& ss) {
    for (int s = 0; s < kStages; ++s) {
      cutlass::arch::ClusterTransactionBarrier::init(&ss.full[s], 1 + kProducerThreads);
      cutlass::arch::ClusterBarrier::init(&ss.empty[s], kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }

  __device__ static void cp_async_16_zfill(uint32_t smem_addr, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(src_bytes)
                 : "memory");
  }

  // The copy mapping of one operand's k-tile: kChunks 16-byte chunks across the tile width, a
  // warp covering whole 256-byte row segments (coalesced reads, conflict-free swizzled writes).
  template <int kWidth>
  struct CopyMap {
    static constexpr int kChunks = kWidth / 8, kRowsPerPass = kProducerThreads / kChunks;
    static constexpr int kPasses = kTileK / kRowsPerPass;
    static constexpr int kLaneGroups = 32 / kChunks;  // rows one warp covers per pass
    static_assert(kProducerThreads % kChunks == 0 && kTileK % kRowsPerPass == 0 && 32 % kChunks == 0,
                  "copy mapping");
  };

  // Gather-index prefetch. A warp's share of a k-tile is kWarpRows = 16 rows (64 rows / 4
  // warps) whatever the tile width, so one index per lane holds them all: lane j (mod 16) loads
  // the source row of the warp's j-th row, and the copy fetches it with a shuffle. One register
  // per k-tile instead of one per pass lets the producer load indices kIndexLookahead k-tiles
  // ahead: ncu showed the producer stalled 81% of its cycles on these loads when they were
  // issued only one k-tile ahead (dW2 at 162 TFLOPS, (24576,1536,256,128,8), H200).
  static constexpr int kWarpRows = kTileK / (kProducerThreads / 32);
  static constexpr int kIndexLookahead = kStages;

  // Tile row of the warp's q-th row in the CopyMap<kWidth> order (pass q / G, lane group q % G).
  template <int kWidth>
  __device__ static int warp_row(int warp, int q) {
    using Map = CopyMap<kWidth>;
    return warp * Map::kLaneGroups + q % Map::kLaneGroups + (q / Map::kLaneGroups) * Map::kRowsPerPass;
  }

  // Source row of reduction slot `slot` (-1: past the expert's rows, or an index out of range).
  __device__ static int32_t source_row(Operand const& op, VarlenKWorkTile const& work, int slot) {
    if (slot >= work.rows) return -1;
    const int64_t grouped_row = int64_t(work.row_start) + slot;
    const int64_t r = op.gather_idx ? int64_t(__ldg(op.gather_idx + grouped_row)) : grouped_row;
    return r >= 0 && r < op.rows ? int32_t(r) : -1;
  }

  // This lane's prefetched index for k-tile kt of the gathered operand.
  template <int kWidth>
  __device__ static int32_t load_warp_index(Operand const& op, VarlenKWorkTile const& work, int kt, int t) {
    return source_row(op, work, kt * kTileK + warp_row<kWidth>(t / 32, (t % 32) % kWarpRows));
  }

  // One k-tile of one operand by cp.async: kTileK rows x kWidth columns from column w0,
  // zero-filled for rows < 0 and columns past `width`. Row of pass p: row_of(p).
  template <int kWidth, class SmemTensor, class RowOf>
  __device__ static void copy_k_tile(Operand const& op, SmemTensor& s, RowOf const& row_of, int w0, int width,
                                     int stage, int t) {
    using Map = CopyMap<kWidth>;
    const int chunk = t % Map::kChunks, row0 = t / Map::kChunks;
    const int col = w0 + chunk * 8;
    const bool col_ok = col < width;
#pragma unroll
    for (int p = 0; p < Map::kPasses; ++p) {
      const int32_t row = row_of(p);
      const bool ok = col_ok && row >= 0;
      const Element* src = ok ? op.ptr + int64_t(row) * op.ld + col : op.ptr;
      cp_async_16_zfill(cute::cast_smem_ptr_to_uint(&s(chunk * 8, row0 + p * Map::kRowsPerPass, stage)), src,
                        ok ? 16 : 0);
    }
  }

  // The k-loop length is per expert here; the skeleton's uniform count is unused.
  __device__ static void produce(Args const& args, SharedStorage& ss, Scheduler const& sched, int /*uniform*/) {
    using namespace cute;
    const int t = threadIdx.x % kProducerThreads;
    const int lane = t % 32;
    Tensor sA = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(ss.b), SmemLayoutB{});
    Tensor sC = make_tensor(make_smem_ptr(kGatherLeft ? ss.b : ss.a), SmemLayoutContig{});
    const Operand& contig = kGatherLeft ? args.right : args.left;
    const int contig_width = kGatherLeft ? args.n : args.m;
    Tensor mC = args.tma.get_tma_tensor(make_shape(contig_width, int(contig.rows)));
    constexpr int kGatherWidth = kGatherLeft ? kTileM : kTileN;
    using GatherMap = CopyMap<kGatherWidth>;
    using ContigMap = CopyMap<kContigWidth>;
    const Operand& gathered = kGatherLeft ? args.left : args.right;
    const int gather_width = kGatherLeft ? args.m : args.n;

    int stage = 0;
    uint32_t phase = 1;  // fresh empty barriers: waiting on parity 1 passes at once
    for (int tile = blockIdx.x;; tile += gridDim.x) {
      VarlenKWorkTile work;
      if (!sched.find(tile, work)) break;
      const int m0 = work.m_block * kTileM, n0 = work.n_block * kTileN;
      const int contig_block = kGatherLeft ? work.n_block : work.m_block;
      // The expert's rows start anywhere: offset the TMA coordinates to its first row.
      Tensor gC = local_tile(domain_offset(make_coord(0, work.row_start), mC),
                             make_shape(Int<kContigWidth>{}, TileK{}), make_coord(contig_block, _));  // (W,K,kt)
      auto [tCg, tCs] = tma_partition(args.tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sC),
                                      group_modes<0, 2>(gC));  // (TMA,kt), (TMA,stage)
      const int tiles = k_tiles(args, work);
      const int gather_w0 = kGatherLeft ? m0 : n0, contig_w0 = kGatherLeft ? n0 : m0;

      // index[u] holds k-tile kt0 + u; the loop is unrolled by the lookahead so that every
      // index lives in a fixed register and is read kIndexLookahead k-tiles after its load.
      int32_t index[kIndexLookahead];
#pragma unroll
      for (int u = 0; u < kIndexLookahead; ++u)
        index[u] = u < tiles ? load_warp_index<kGatherWidth>(gathered, work, u, t) : -1;
      for (int kt0 = 0; kt0 < tiles; kt0 += kIndexLookahead) {
#pragma unroll
        for (int u = 0; u < kIndexLookahead; ++u) {
          const int kt = kt0 + u;
          if (kt >= tiles) break;
          cutlass::arch::ClusterBarrier::wait(&ss.empty[stage], phase);
          if ((kt + 1) * kTileK <= work.rows) {
            if (t == 0) {
              cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.full[stage], kTmaBytes);
              copy(args.tma.with(ss.full[stage]), tCg(_, kt), tCs(_, stage));
            }
          } else {
            // The expert's partial last k-tile: the contiguous operand by cp.async, zero-filled.
            if (t == 0) cutlass::arch::ClusterBarrier::arrive(&ss.full[stage]);
            const int row0 = t / ContigMap::kChunks;
            copy_k_tile<kContigWidth>(
                contig, sC,
                [&](int p) { return source_row(contig, work, kt * kTileK + row0 + p * ContigMap::kRowsPerPass); },
                contig_w0, contig_width, stage, t);
          }
          const int32_t mine = index[u];
          const auto gathered_row = [&](int p) {
            return __shfl_sync(0xffffffffu, mine, p * GatherMap::kLaneGroups + lane / GatherMap::kChunks);
          };
          if constexpr (kGatherLeft)
            copy_k_tile<kTileM>(args.left, sA, gathered_row, gather_w0, gather_width, stage, t);
          else
            copy_k_tile<kTileN>(args.right, sB, gathered_row, gather_w0, gather_width, stage, t);
          cutlass::arch::cpasync_barrier_arrive_noinc(&ss.full[stage]);
          if (++stage == kStages) {
            stage = 0;
            phase ^= 1;
          }
          index[u] = kt + kIndexLookahead < tiles
                         ? load_warp_index<kGatherWidth>(gathered, work, kt + kIndexLookahead, t)
                         : -1;
        }
      }
    }
    cute::cp_async_wait<0>();
  }

  // One output tile's reduction, accumulated onto `accum` (the kernel zeroes it first, so an
  // expert without rows gets a zero gradient).
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
    tiled_mma.accumulate_ = GMMA::ScaleOut::One;
    int release_stage = stage;
    warpgroup_fence_operand(accum);
    for (int kt = 0; kt < tiles; ++kt) {
      cutlass::arch::ClusterTransactionBarrier::wait(&ss.full[stage], phase);
      // cp.async wrote through the generic proxy; wgmma reads through the async proxy.
      cutlass::arch::fence_view_async_shared();
      warpgroup_fence_operand(accum);
      warpgroup_arrive();
#pragma unroll
      for (int kb = 0; kb < size<2>(tCrA); ++kb) {
        cute::gemm(tiled_mma, tCrA(_, _, kb, stage), tCrB(_, _, kb, stage), accum);
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
