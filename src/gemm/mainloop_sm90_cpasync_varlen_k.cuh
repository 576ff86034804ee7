// src/gemm/mainloop_sm90_cpasync_varlen_k.cuh — mainloop of the weight-gradient GEMMs (varlen K):
//   C_e[m, n] = Σ_{rows r of e} L[lrow(r), m] · R[rrow(r), n]
// dW2 = dOᵀ·(s·A): L = dO gathered by gather_idx, R = s·A contiguous in grouped order.
// dW1ᵀ = xᵀ·dH:    L = x gathered by gather_idx,   R = dH contiguous (stored transposed by
//                  EpilogueWeightGradTransposed, so that the gathered operand is the 128-wide one).
//
// Both operands are MN-major in shared memory (one gathered row brings 8 consecutive M or N
// values per 16-byte chunk). The gathered operand is loaded by cp.async (TMA cannot gather
// rows; one TMA copy per row measured 27-34% slower, docs/performance.md). The contiguous one by
// TMA on every k-tile that lies wholly inside the expert's rows;
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

#include "gemm/consumer_k_loop_sm90.cuh"
#include "gemm/scheduler_varlen_k.cuh"

namespace sonicmoe::gemm {

template <class Cfg>
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

  // The left operand (tile width kTileM) is the gathered one, the right (kTileN) the contiguous
  // one. Gathering the 256-wide operand instead was measured slower: dW1 computed as dHᵀ·x ran at
  // 426-453 TFLOPS, as xᵀ·dH at 545-555 ((24576,1536,256,128,8) and (32768,4096,512,128,8), H200).
  static constexpr int kContigWidth = kTileN;
  using SmemLayoutContig = SmemLayoutB;

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
    TmaContig tma;  // the contiguous operand, right
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

  // Gather-index prefetch. A warp copies kWarpRows = 16 consecutive rows of every k-tile
  // (64 rows / 4 warps) whatever the tile width, so one index per lane holds them all: lane j
  // (mod 16) loads the source row of the warp's j-th row, and the copy fetches it with a shuffle.
  // One register per k-tile lets the producer load indices kIndexLookahead k-tiles ahead: ncu
  // showed the producer stalled 81% of its cycles on these loads when they were issued only one
  // k-tile ahead (dW2 at 162 TFLOPS, (24576,1536,256,128,8), H200).
  static constexpr int kWarpRows = kTileK / (kProducerThreads / 32);
  static constexpr int kIndexLookahead = kStages;

  // Source row of reduction slot `slot` (-1: past the expert's rows, or an index out of range).
  __device__ static int32_t source_row(Operand const& op, VarlenKWorkTile const& work, int slot) {
    if (slot >= work.rows) return -1;
    const int64_t grouped_row = int64_t(work.row_start) + slot;
    const int64_t r = op.gather_idx ? int64_t(__ldg(op.gather_idx + grouped_row)) : grouped_row;
    return r >= 0 && r < op.rows ? int32_t(r) : -1;
  }

  // This lane's prefetched index for k-tile kt of the gathered operand, unchecked (-1 past the
  // expert's rows): RowCopy::copy range-checks it when it is used. Checked here, the compare
  // consumed the load at once and the producer waited for every index (ncu, dW1: the top
  // producer stall, right after the load).
  __device__ static int32_t load_warp_index(Operand const& op, VarlenKWorkTile const& work, int kt, int t) {
    const int slot = kt * kTileK + (t / 32) * kWarpRows + t % kWarpRows;
    if (slot >= work.rows) return -1;
    const int64_t grouped_row = int64_t(work.row_start) + slot;
    return op.gather_idx ? __ldg(op.gather_idx + grouped_row) : int32_t(grouped_row);
  }

  // One k-tile of one operand (kTileK rows x kWidth columns from column w0) by cp.async into the
  // MN-major 128-byte-swizzled layout, zero-filled for rows < 0 and columns past `width`.
  // Warp w copies rows [16w, 16w + 16) of the k-tile; per pass its lanes cover kGroups whole rows
  // (lane group g = lane / kChunks copies row 16w + p*kGroups + g, 16-byte chunk c = lane %
  // kChunks of it: coalesced reads). Addresses are set up once per tile: rows p*kGroups apart
  // inside a warp's block differ in shared memory by whole 128-byte rows plus the swizzle's XOR of
  // (row mod 8) into the chunk bits 4-6, so one copy costs a shuffle (its row index), a compare,
  // one wide multiply-add (the global address), an XOR and the cp.async. The first version
  // computed every address through the CuTe layout with 64-bit pointer arithmetic, ~20
  // instructions per 16 bytes: ncu showed the producer issuing all the time and the consumers
  // waiting for it in 47% of their samples (dW1 at 319 TFLOPS, (24576,1536,256,128,8), H200).
  template <int kWidth>
  struct RowCopy {
    static constexpr int kChunks = kWidth / 8;
    static constexpr int kGroups = 32 / kChunks;
    static constexpr int kPasses = kWarpRows / kGroups;
    static constexpr uint32_t kStageBytes = kWidth * kTileK * sizeof(Element);
    static_assert(32 % kChunks == 0 && kWarpRows % kGroups == 0 && 8 % kGroups == 0, "copy mapping");
    uint32_t dst;       // shared address of this lane's chunk in stage 0, pass 0
    const char* src;    // this lane's column in row 0 of the operand
    uint32_t ld_bytes;  // bytes between operand rows (<= 2^29: feature sizes are <= 2^28)
    uint32_t rows;      // rows of the operand: valid source rows are [0, rows)
    bool col_ok;

    template <class SmemTensor>
    __device__ RowCopy(SmemTensor& s, Operand const& op, int w0, int width, int t) {
      const int lane = t % 32, c = lane % kChunks;
      dst = cute::cast_smem_ptr_to_uint(&s(c * 8, (t / 32) * kWarpRows + lane / kChunks, 0));
      col_ok = w0 + c * 8 < width;
      src = reinterpret_cast<const char*>(op.ptr + (col_ok ? w0 + c * 8 : 0));
      ld_bytes = uint32_t(op.ld * int64_t(sizeof(Element)));
      rows = uint32_t(min(op.rows, int64_t(INT32_MAX)));
    }
    // The row (0..15) of the warp's block that this lane copies in pass p; with the prefetched
    // indices, also the lane that holds its source row.
    CUTE_HOST_DEVICE static constexpr int warp_row(int p, int lane) { return p * kGroups + lane / kChunks; }
    // Shared address of pass p from the lane's pass-0 address (same stage): whole 128-byte rows
    // further, with the swizzle phase of the new row XORed into the chunk bits. Host-callable:
    // tests/cpp/gpu/test_smem_addressing.cu checks it against the CuTe layout.
    CUTE_HOST_DEVICE static constexpr uint32_t pass_address(uint32_t pass0, int p) {
      return (pass0 ^ uint32_t((p * kGroups) % 8 << 4)) + uint32_t(p * kGroups * 128);
    }

    // row_of(p): the source row of this lane's pass p; rows outside [0, rows) are zero-filled.
    template <class RowOf>
    __device__ void copy(int stage, RowOf const& row_of) const {
      const uint32_t base = dst + uint32_t(stage) * kStageBytes;
#pragma unroll
      for (int p = 0; p < kPasses; ++p) {
        const uint32_t row = uint32_t(row_of(p));  // negative -> huge: one compare checks both ends
        const bool ok = col_ok && row < rows;
        const char* from = src + uint64_t(ok ? row : 0u) * ld_bytes;
        cp_async_16_zfill(pass_address(base, p), from, ok ? 16 : 0);
      }
    }
  };

  // The k-loop length is per expert here; the skeleton's uniform count is unused.
  __device__ static void produce(Args const& args, SharedStorage& ss, Scheduler const& sched, int /*uniform*/) {
    using namespace cute;
    const int t = threadIdx.x % kProducerThreads;
    const int lane = t % 32;
    Tensor sA = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(ss.b), SmemLayoutB{});
    Tensor sC = make_tensor(make_smem_ptr(ss.b), SmemLayoutContig{});
    Tensor sG = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    const Operand& contig = args.right;
    const Operand& gathered = args.left;
    const int contig_width = args.n;
    const int gather_width = args.m;
    Tensor mC = args.tma.get_tma_tensor(make_shape(contig_width, int(contig.rows)));
    using GatherCopy = RowCopy<kTileM>;
    using ContigCopy = RowCopy<kContigWidth>;

    int stage = 0;
    uint32_t phase = 1;  // fresh empty barriers: waiting on parity 1 passes at once
    for (int tile = blockIdx.x;; tile += gridDim.x) {
      VarlenKWorkTile work;
      if (!sched.find(tile, work)) break;
      const int m0 = work.m_block * kTileM, n0 = work.n_block * kTileN;
      const int contig_block = work.n_block;
      // The expert's rows start anywhere: offset the TMA coordinates to its first row.
      Tensor gC = local_tile(domain_offset(make_coord(0, work.row_start), mC),
                             make_shape(Int<kContigWidth>{}, TileK{}), make_coord(contig_block, _));  // (W,K,kt)
      auto [tCg, tCs] = tma_partition(args.tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sC),
                                      group_modes<0, 2>(gC));  // (TMA,kt), (TMA,stage)
      const int tiles = k_tiles(args, work);
      const GatherCopy gather_copy(sG, gathered, m0, gather_width, t);

      // index[u] holds k-tile kt0 + u; the loop is unrolled by the lookahead so that every
      // index lives in a fixed register and is read kIndexLookahead k-tiles after its load.
      int32_t index[kIndexLookahead];
#pragma unroll
      for (int u = 0; u < kIndexLookahead; ++u) index[u] = u < tiles ? load_warp_index(gathered, work, u, t) : -1;
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
            const ContigCopy tail_copy(sC, contig, n0, contig_width, t);
            const int row0 = kt * kTileK + (t / 32) * kWarpRows;
            tail_copy.copy(stage, [&](int p) { return source_row(contig, work, row0 + ContigCopy::warp_row(p, lane)); });
          }
          const int32_t mine = index[u];
          gather_copy.copy(stage, [&](int p) { return __shfl_sync(0xffffffffu, mine, GatherCopy::warp_row(p, lane)); });
          cutlass::arch::cpasync_barrier_arrive_noinc(&ss.full[stage]);
          if (++stage == kStages) {
            stage = 0;
            phase ^= 1;
          }
          index[u] = kt + kIndexLookahead < tiles ? load_warp_index(gathered, work, kt + kIndexLookahead, t) : -1;
        }
      }
    }
    cute::cp_async_wait<0>();
  }

  // A stage's two buffers, for an epilogue that borrows them as output staging (see mma).
  __device__ static StageBuffers<Element> stage_buffers(SharedStorage& ss, int stage) {
    return stage_buffers_at<kTileM * kTileK, kTileN * kTileK>(ss.a, ss.b, stage);
  }

  // One output tile's reduction, accumulated onto `accum` (the kernel zeroes it first, so an
  // expert without rows gets a zero gradient): consume_k_tiles. kLend: the TMA-store epilogue
  // borrows the tile's last stage (none for an expert without rows: `*lent` = -1).
  template <bool kLend = false, class ThrMma, class Accum, class LookAhead>
  __device__ static void mma(TiledMma& tiled_mma, ThrMma const& thr_mma, Accum& accum, SharedStorage& ss,
                             int tiles, int& stage, uint32_t& phase, LookAhead&& look_ahead, int* lent = nullptr) {
    using namespace cute;
    static_assert(!kLend || !Cfg::kPingPong, "a lent stage is given back by the tile's single store thread");
    Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(make_tensor(make_smem_ptr(ss.a), SmemLayoutA{})));
    Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(make_tensor(make_smem_ptr(ss.b), SmemLayoutB{})));
    // The gathered operand (every k-tile) and the contiguous one's tail come by cp.async.
    consume_k_tiles<kStages, kLend, true>(tiled_mma, tCrA, tCrB, accum, ss.full, ss.empty, tiles, stage, phase,
                                          look_ahead, lent);
  }
};

}  // namespace sonicmoe::gemm
