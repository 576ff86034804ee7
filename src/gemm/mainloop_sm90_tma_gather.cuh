// src/gemm/mainloop_sm90_tma_gather.cuh — the sm_90a mainloop of the grouped GEMM skeleton:
// A rows gathered by cp.async through an index array (ASource::kGather), or contiguous grouped
// rows by TMA (ASource::kTma); B (the expert's weight, [E, N, K] K- or MN-major) by TMA; wgmma on
// both from shared memory.
//
// ASource::kTma (down-proj, dX̃: A is [TK, K] in grouped order): one TMA box of kTileM rows from
// the tile's first grouped row. A box that runs past the expert's last row reads the next
// expert's rows (or zeros past TK): those rows only produce output rows past the expert's end,
// which the epilogues never store (each output row depends on its own A row alone), so unlike
// varlen K nothing leaks into a stored result. The whole stage then comes by TMA: one producer
// thread arms the full barrier with the A and B bytes, and the other producer warps have nothing
// to do.
//
// Why cp.async and not TMA for the gathered rows: Hopper's TMA has no row gather, and one
// 128-byte TMA copy per row (a one-row box, which lands correctly swizzled) measured 23-45% slower
// for the gather roles than these cp.async copies (H200, 2026-11-28; docs/performance.md).
//
// Producer, ASource::kGather (warpgroup 0, 128 threads): per stage, thread 0 arms the stage's
// full barrier with the B bytes (arrive-expect-tx) and issues the TMA; every producer thread
// issues its 8 16-byte cp.async copies of A and commits them with cp.async.mbarrier.arrive.noinc,
// so the full barrier (arrival count 1 + 128) completes only when the TMA bytes and all A copies
// have landed. Rows past the expert's end and K columns past K are zero-filled (cp.async
// src-size 0; TMA out-of-bounds fill), so tails of any length add nothing to the accumulators.
//
// Consumers (warpgroups 1..2): consume_k_tiles (consumer_k_loop_sm90.cuh), shared with the
// varlen-K mainloop.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>

#include "gemm/consumer_k_loop_sm90.cuh"
#include "gemm/scheduler_grouped.cuh"

namespace sonicmoe::gemm {

enum class ASource { kGather, kTma };

// kMajorB: how the weight is stored. K-major: [E, N, K] with K contiguous (the forward roles:
// W1 for up-proj, W2 for down-proj). MN-major: [E, K, N] with N contiguous (the backward
// dX̃ = dH · W1, which reads W1 [E, 2n, d] untransposed). wgmma reads 16-bit MN-major operands
// from shared memory natively, so only the smem atom, the TMA view and the MMA atom change.
template <class Cfg, cute::GMMA::Major kMajorB = cute::GMMA::Major::K, ASource kA = ASource::kGather>
struct MainloopSm90TmaGather {
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

  // 128-byte swizzled K-major atoms (8 rows x 64 bf16): the layout wgmma reads without bank
  // conflicts and TMA writes natively; the cp.async producer writes through the same layout.
  static constexpr bool kBIsMN = kMajorB == cute::GMMA::Major::MN;
  using SmemLayoutAtomA = cute::GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutA = decltype(cute::tile_to_shape(SmemLayoutAtomA{}, cute::Shape<TileM, TileK, StagesC>{}));
  // MN-major B: 64(N) x 8(K) atoms, stacked along K first (the order CUTLASS's sm90 collectives
  // use for MN-major operands, which the GMMA descriptors expect).
  using SmemLayoutAtomB = cute::conditional_t<kBIsMN, cute::GMMA::Layout_MN_SW128_Atom<Element>,
                                              cute::GMMA::Layout_K_SW128_Atom<Element>>;
  using SmemLayoutB = decltype(cute::tile_to_shape(
      SmemLayoutAtomB{}, cute::Shape<TileN, TileK, StagesC>{},
      cute::conditional_t<kBIsMN, cute::Step<cute::_2, cute::_1, cute::_3>, cute::Step<cute::_1, cute::_2, cute::_3>>{}));

  // Consumer warpgroups split the tile along M: each issues m64 x kTileN x k16 wgmmas.
  using TiledMma = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float, cute::Shape<cute::_64, TileN, TileK>,
                                 cute::GMMA::Major::K, kMajorB>(),
      cute::Layout<cute::Shape<cute::Int<Cfg::kMmaWarpgroups>, cute::_1, cute::_1>>{}));
  static_assert(kTileM == 64 * Cfg::kMmaWarpgroups, "one m64 wgmma row block per consumer warpgroup");
  static_assert(Cfg::kChunksPerRow * Cfg::kRowsPerPass == kProducerThreads, "gather thread mapping");

  struct alignas(1024) SharedStorage {
    alignas(1024) Element a[cute::cosize_v<SmemLayoutA>];
    alignas(1024) Element b[cute::cosize_v<SmemLayoutB>];
    alignas(8) uint64_t full[kStages];
    alignas(8) uint64_t empty[kStages];
  };

  // The weight tensor seen by TMA: (N, K, E), K contiguous ([E, N, K]) or N contiguous
  // ([E, K, N]); 64-bit strides because E*N*K exceeds 2^31 elements for real models.
  static auto make_tma_b(const Element* w, int n, int k, int experts) {
    using namespace cute;
    auto shape = make_shape(n, k, experts);
    const int64_t expert_stride = int64_t(n) * int64_t(k);
    if constexpr (kBIsMN) {
      auto g = make_tensor(make_gmem_ptr(w), make_layout(shape, make_stride(_1{}, int64_t(n), expert_stride)));
      return make_tma_copy(SM90_TMA_LOAD{}, g, SmemLayoutB{}(_, _, 0), make_shape(TileN{}, TileK{}), Int<1>{});
    } else {
      auto g = make_tensor(make_gmem_ptr(w), make_layout(shape, make_stride(int64_t(k), _1{}, expert_stride)));
      return make_tma_copy(SM90_TMA_LOAD{}, g, SmemLayoutB{}(_, _, 0), make_shape(TileN{}, TileK{}), Int<1>{});
    }
  }
  using TmaB = decltype(make_tma_b(nullptr, 1, 1, 1));
  static constexpr uint32_t kTmaBytesB = uint32_t(kTileN * kTileK * sizeof(Element));

  // ASource::kTma: A [rows, K] K-major as TMA sees it; boxes of kTileM x kTileK.
  static constexpr bool kTmaA = kA == ASource::kTma;
  static auto make_tma_a(const Element* a, int rows, int k, int64_t lda) {
    using namespace cute;
    auto g = make_tensor(make_gmem_ptr(a), make_layout(make_shape(rows, k), make_stride(lda, _1{})));
    return make_tma_copy(SM90_TMA_LOAD{}, g, SmemLayoutA{}(_, _, 0), make_shape(TileM{}, TileK{}), Int<1>{});
  }
  struct NoTma {};
  using TmaA = cute::conditional_t<kTmaA, decltype(make_tma_a(nullptr, 1, 8, 8)), NoTma>;
  static constexpr uint32_t kTmaBytesA = uint32_t(kTileM * kTileK * sizeof(Element));

  struct Args {
    TmaB tma_b;
    const Element* a;           // A rows: x [num_tokens, K] (gathered) or A [num_rows, K]
    int64_t lda;                // elements between rows of A
    const int32_t* gather_idx;  // grouped row -> A row; nullptr = identity
    int64_t a_rows;             // rows of the A tensor (bound for gathered indices)
    int n;                      // N of the GEMM (rows of each expert's weight)
    int k;                      // K of the GEMM
    int num_experts;
    TmaA tma_a = {};            // ASource::kTma only: A (make_tma_a over a [a_rows, k])
  };

  // The arguments for weight `w` ([E, n, k], or [E, k, n] for MN-major B) and A [a_rows, k] with
  // row stride lda: its rows gathered through gather_idx (ASource::kGather; nullptr = grouped order)
  // or read in grouped order by TMA (ASource::kTma).
  static Args make_args(const void* w, const void* a, int64_t lda, const int32_t* gather_idx, int64_t a_rows, int n,
                        int k, int experts) {
    const auto* a_elements = reinterpret_cast<const Element*>(a);
    Args args{.tma_b = make_tma_b(reinterpret_cast<const Element*>(w), n, k, experts),
              .a = a_elements,
              .lda = lda,
              .gather_idx = gather_idx,
              .a_rows = a_rows,
              .n = n,
              .k = k,
              .num_experts = experts};
    if constexpr (kTmaA) args.tma_a = make_tma_a(a_elements, int(a_rows), k, lda);
    return args;
  }

  // The skeleton's hooks (kernel_sm90_grouped.cuh): ragged rows per expert (varlen M), a fixed
  // k-loop over the GEMM's K. Tile order inside an expert (scheduler_grouped.cuh): m-blocks fastest
  // where A comes by TMA (down-proj, dX̃: their weight is the larger per-expert operand at the
  // 30B shapes; dX̃ 1.02x at n=1024, down-proj 0.99-1.01x), n-blocks fastest where A is gathered
  // (m-blocks fastest measured up-proj 0.98-1.00x, dH 0.97-0.98x at the 30B shapes). H200, same
  // call, 2026-11-29.
  using Scheduler = GroupedTileScheduler<kTileM, kTmaA>;
  static constexpr bool kVarlenK = false;
  using Work = WorkTile;
  __device__ static Scheduler make_scheduler(Args const& args, const int32_t* offsets, int experts, int rows) {
    return Scheduler(offsets, experts, rows, (args.n + kTileN - 1) / kTileN);
  }
  __device__ static int k_tiles(Args const& args, Work const&) { return (args.k + kTileK - 1) / kTileK; }
  __device__ static void prefetch(Args const& args) {
    cute::prefetch_tma_descriptor(args.tma_b.get_tma_descriptor());
    if constexpr (kTmaA) cute::prefetch_tma_descriptor(args.tma_a.get_tma_descriptor());
  }
  // Upper bound on the tile count for the grid size: each expert owns ceil(rows/kTileM) <=
  // rows/kTileM + 1 m-blocks.
  static int64_t max_tiles(Args const& args, int64_t rows, int64_t experts) {
    return (rows / kTileM + experts) * ((args.n + kTileN - 1) / kTileN);
  }

  __device__ static void init_barriers(SharedStorage& ss) {
    for (int s = 0; s < kStages; ++s) {
      // Gathered A: the TMA thread's arrive-expect-tx plus one cp.async arrival per producer
      // thread; A by TMA: the TMA thread's alone.
      cutlass::arch::ClusterTransactionBarrier::init(&ss.full[s], kTmaA ? 1 : 1 + kProducerThreads);
      cutlass::arch::ClusterBarrier::init(&ss.empty[s], kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }

  __device__ static void cp_async_16_zfill(uint32_t smem_addr, const void* gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem), "r"(src_bytes)
                 : "memory");
  }

  // Offset of an A chunk's pass p from its pass 0 (same stage, same column): this thread's rows
  // row0 + p*kRowsPerPass (kRowsPerPass = 16) keep the same swizzle phase (row mod 8), so pass p
  // lies whole 128-byte rows further. Host-callable: tests/cpp/gpu/test_smem_addressing.cu checks
  // it against the CuTe layout.
  CUTE_HOST_DEVICE static constexpr uint32_t pass_offset_a(int p) { return uint32_t(p * Cfg::kRowsPerPass * 128); }
  static constexpr uint32_t kStageBytesA = kTileM * kTileK * sizeof(Element);

  // Source rows of this thread's kPasses A rows in `work` (-1: past the tile's rows or out of
  // range). Issued one tile ahead (see produce) so that the loads are in flight during the
  // previous tile's k-loop.
  __device__ static void load_a_rows(Args const& args, WorkTile const& work, int row0, int32_t (&rows)[Cfg::kPasses]) {
    const int m0 = work.m_block * kTileM;
    const int tile_rows = min(kTileM, work.rows - m0);
#pragma unroll
    for (int p = 0; p < Cfg::kPasses; ++p) {
      const int r = row0 + p * Cfg::kRowsPerPass;
      const int64_t grouped_row = int64_t(work.row_start) + m0 + r;
      rows[p] = r < tile_rows ? (args.gather_idx ? __ldg(args.gather_idx + grouped_row) : int32_t(grouped_row)) : -1;
    }
  }

  // Producer warpgroup body: walks the same tiles as the consumers and fills the stages. The
  // next tile (its scheduler lookup and gather indices) is looked up at the start of the current
  // one: looked up at the boundary, the two dependent memory round trips left the consumers
  // waiting for the new tile's first stages (ncu, up-proj: consumers waited on full barriers in
  // 33% of their samples and the producer's gather-index loads were its top stall).
  __device__ static void produce(Args const& args, SharedStorage& ss, Scheduler& sched, int k_tiles) {
    if constexpr (kTmaA) {
      produce_tma(args, ss, sched, k_tiles);
      return;
    }
    using namespace cute;
    const int t = threadIdx.x % kProducerThreads;
    const int chunk = t % Cfg::kChunksPerRow;
    const int row0 = t / Cfg::kChunksPerRow;

    Tensor sA = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(ss.b), SmemLayoutB{});
    Tensor mB = args.tma_b.get_tma_tensor(make_shape(args.n, args.k, args.num_experts));
    Tensor gB = local_tile(mB, Shape<TileM, TileN, TileK>{}, make_coord(_, _, _), Step<X, _1, _1>{});  // (BN,BK,n,k,E)
    auto [tBgB, tBsB] = tma_partition(args.tma_b, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sB),
                                      group_modes<0, 2>(gB));  // (TMA,n,k,E), (TMA,stage)

    // Shared address of this thread's first A chunk in stage 0; pass p is pass_offset_a(p)
    // further (an immediate offset).
    const uint32_t dst0 = cast_smem_ptr_to_uint(&sA(row0, chunk * 8, 0));
    static_assert(Cfg::kRowsPerPass % 8 == 0 && kTileK * sizeof(Element) == 128, "one swizzle atom per row");

    int stage = 0;
    uint32_t phase = 1;  // fresh empty barriers: waiting on parity 1 passes at once
    int tile = blockIdx.x;
    WorkTile work;
    bool have = sched.find(tile, work);
    int32_t rows[Cfg::kPasses];
    if (have) load_a_rows(args, work, row0, rows);
    while (have) {
      const Element* src[Cfg::kPasses];
#pragma unroll
      for (int p = 0; p < Cfg::kPasses; ++p)
        src[p] = rows[p] >= 0 && rows[p] < args.a_rows ? args.a + int64_t(rows[p]) * args.lda + chunk * 8 : nullptr;
      WorkTile next;
      const bool have_next = sched.find(tile + gridDim.x, next);
      if (have_next) load_a_rows(args, next, row0, rows);
      for (int kt = 0; kt < k_tiles; ++kt) {
        cutlass::arch::ClusterBarrier::wait(&ss.empty[stage], phase);
        if (t == 0) {
          cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.full[stage], kTmaBytesB);
          copy(args.tma_b.with(ss.full[stage]), tBgB(_, work.n_block, kt, work.expert), tBsB(_, stage));
        }
        const bool k_in = kt * kTileK + chunk * 8 < args.k;
        const uint32_t dst = dst0 + stage * kStageBytesA;
#pragma unroll
        for (int p = 0; p < Cfg::kPasses; ++p) {
          const bool ok = k_in && src[p] != nullptr;
          cp_async_16_zfill(dst + pass_offset_a(p), ok ? src[p] + kt * kTileK : args.a, ok ? 16 : 0);
        }
        cutlass::arch::cpasync_barrier_arrive_noinc(&ss.full[stage]);
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      tile += gridDim.x;
      work = next;
      have = have_next;
    }
    cute::cp_async_wait<0>();
  }

  // ASource::kTma: the producer's first warp walks the tiles (the scheduler works warp-wide) and
  // its lane 0 issues both TMA copies of every stage; the other producer warps leave.
  __device__ static void produce_tma(Args const& args, SharedStorage& ss, Scheduler& sched, int k_tiles) {
    using namespace cute;
    if ((threadIdx.x % kProducerThreads) / 32 != 0) return;
    const bool issuer = (threadIdx.x & 31) == 0;
    Tensor sA = make_tensor(make_smem_ptr(ss.a), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(ss.b), SmemLayoutB{});
    Tensor mA = args.tma_a.get_tma_tensor(make_shape(int(args.a_rows), args.k));
    Tensor mB = args.tma_b.get_tma_tensor(make_shape(args.n, args.k, args.num_experts));
    Tensor gB = local_tile(mB, Shape<TileM, TileN, TileK>{}, make_coord(_, _, _), Step<X, _1, _1>{});  // (BN,BK,n,k,E)
    auto [tBgB, tBsB] = tma_partition(args.tma_b, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sB),
                                      group_modes<0, 2>(gB));  // (TMA,n,k,E), (TMA,stage)
    int stage = 0;
    uint32_t phase = 1;  // fresh empty barriers: waiting on parity 1 passes at once
    for (int tile = blockIdx.x;; tile += gridDim.x) {
      WorkTile work;
      if (!sched.find(tile, work)) break;
      // The tile's rows start at its first grouped row, anywhere in A: shift the origin there.
      Tensor gA = local_tile(domain_offset(make_coord(work.row_start + work.m_block * kTileM, 0), mA),
                             Shape<TileM, TileK>{}, make_coord(0, _));  // (BM,BK,k)
      auto [tAgA, tAsA] = tma_partition(args.tma_a, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sA),
                                        group_modes<0, 2>(gA));  // (TMA,k), (TMA,stage)
      for (int kt = 0; kt < k_tiles; ++kt) {
        cutlass::arch::ClusterBarrier::wait(&ss.empty[stage], phase);
        if (issuer) {
          cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&ss.full[stage], kTmaBytesA + kTmaBytesB);
          copy(args.tma_a.with(ss.full[stage]), tAgA(_, kt), tAsA(_, stage));
          copy(args.tma_b.with(ss.full[stage]), tBgB(_, work.n_block, kt, work.expert), tBsB(_, stage));
        }
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
  }

  // A stage's two buffers, for an epilogue that borrows them as output staging (see mma).
  __device__ static StageBuffers<Element> stage_buffers(SharedStorage& ss, int stage) {
    return stage_buffers_at<kTileM * kTileK, kTileN * kTileK>(ss.a, ss.b, stage);
  }

  // Consumer: one output tile's k-loop, accumulating onto `accum` (consume_k_tiles). kLend
  // (cooperative only): the epilogue borrows the tile's last stage as output staging
  // (TmaTileStore); its index comes back in `*lent`, and the next call gives it back.
  template <bool kLend = false, class ThrMma, class Accum, class LookAhead>
  __device__ static void mma(TiledMma& tiled_mma, ThrMma const& thr_mma, Accum& accum, SharedStorage& ss,
                             int k_tiles, int& stage, uint32_t& phase, LookAhead&& look_ahead, int* lent = nullptr) {
    using namespace cute;
    static_assert(!kLend || !Cfg::kPingPong, "a lent stage is given back by the tile's single store thread");
    Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(make_tensor(make_smem_ptr(ss.a), SmemLayoutA{})));
    Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(make_tensor(make_smem_ptr(ss.b), SmemLayoutB{})));
    // Gathered A was written by cp.async (generic proxy).
    consume_k_tiles<kStages, kLend, !kTmaA>(tiled_mma, tCrA, tCrB, accum, ss.full, ss.empty, k_tiles, stage, phase,
                                            look_ahead, lent);
  }
};

}  // namespace sonicmoe::gemm
