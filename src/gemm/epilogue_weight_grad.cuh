// src/gemm/epilogue_weight_grad.cuh — epilogues of the weight-gradient roles (varlen K): the
// tile of expert e's dense [m, n] gradient (dW2), or of its transpose (dW1). Output tiles are
// written once each (the reduction over the expert's rows is complete in the accumulators), so
// there is nothing to accumulate across CTAs and the result is deterministic.
//   EpilogueWeightGrad[Transposed]: bf16 pairs straight from the registers.
//   EpilogueWeightGradTma<Cfg, kTransposed>: the tile staged in shared memory (mostly the tile's
//     last mainloop stage, lent for it: TmaTileStore) and written by TMA stores that drain while
//     the next tile's wgmmas run; the register stores above for the tiles TMA cannot take.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>

#include <cstdint>
#include <type_traits>

#include "gemm/epilogue_store.cuh"
#include "gemm/scheduler_varlen_k.cuh"

namespace sonicmoe::gemm {

// What both weight-gradient stores share: the gradient tensor and the extent of the tile's M
// side (the GEMM's n is the skeleton's n_total); no shared memory, nothing to prefetch or finish.
struct WeightGradStoreBase {
  struct Params {
    __nv_bfloat16* out;  // [E, m, n] (EpilogueWeightGrad) or [E, n, m] (transposed)
    int m;               // the tile's M extent: rows (or, transposed, columns) of each expert's gradient
  };

  struct SharedStorage {};
  __device__ static void prefetch(Params const&) {}
  __device__ static void finish(int) {}
};

struct EpilogueWeightGrad : WeightGradStoreBase {

  template <int kTileM, int kTileN, class Accum, class Coords, class AnyStorage>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, VarlenKWorkTile const& work,
                               int n_total, AnyStorage const&, int /*consumer_thread*/) {
    const int m0 = work.m_block * kTileM, n0 = work.n_block * kTileN;
    __nv_bfloat16* out = p.out + int64_t(work.expert) * p.m * n_total;
#pragma unroll
    for (int i = 0; i < cute::size(accum); i += 2) {
      const int row = m0 + cute::get<0>(coords(i));
      const int col = n0 + cute::get<1>(coords(i));  // even; n is a multiple of 8
      if (row < p.m && col < n_total)
        *reinterpret_cast<__nv_bfloat162*>(out + int64_t(row) * n_total + col) =
            __floats2bfloat162_rn(accum(i), accum(i + 1));
    }
  }
};

// The transposed store: the tile holds C[m, n] = out_e[n, m]. dW1 is computed this way (C = xᵀ·dH
// instead of dHᵀ·x) so that its gathered operand, x, is the 128-wide one of the tile: gathered
// 256 wide (the dHᵀ·x orientation) the mainloop ran at 426 TFLOPS where dW2, gathering 128 wide,
// ran at 512 ((24576,1536,256,128,8), H200). Rows m and m+1 of a column sit in lanes L and L^4 of
// the accumulator fragment (rows r0 and r0 ^ 1, checked on the host in test_smem_addressing.cu), so
// one shuffle per pair lets every thread store a bf16x2 word of out: the thread with the even row
// takes column n of both rows, its partner column n + 1.
struct EpilogueWeightGradTransposed : WeightGradStoreBase {

  template <int kTileM, int kTileN, class Accum, class Coords, class AnyStorage>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, VarlenKWorkTile const& work,
                               int n_total, AnyStorage const&, int /*consumer_thread*/) {
    const int m0 = work.m_block * kTileM, n0 = work.n_block * kTileN;
    __nv_bfloat16* out = p.out + int64_t(work.expert) * n_total * p.m;
    const bool even_row = (cute::get<0>(coords(0)) & 1) == 0;
#pragma unroll
    for (int i = 0; i < cute::size(accum); i += 2) {
      const int row = m0 + cute::get<0>(coords(i));
      const int col = n0 + cute::get<1>(coords(i));  // even; n is a multiple of 8
      // The partner (row ^ 1) needs the value this thread holds in the partner's column.
      const float mine_kept = even_row ? accum(i) : accum(i + 1);
      const float theirs = __shfl_xor_sync(0xffffffffu, even_row ? accum(i + 1) : accum(i), 4);
      const int first_row = even_row ? row : row - 1;  // m of the pair (even; m is a multiple of 8)
      const int out_col = even_row ? col : col + 1;    // n the pair belongs to
      const __nv_bfloat162 pair = even_row ? __floats2bfloat162_rn(mine_kept, theirs)
                                           : __floats2bfloat162_rn(theirs, mine_kept);
      if (first_row < p.m && out_col < n_total)
        *reinterpret_cast<__nv_bfloat162*>(out + int64_t(out_col) * p.m + first_row) = pair;
    }
  }
};

// The TMA-store version of both: the tile is rounded to bf16 pairs, written to the staging slabs
// by stmatrix (transposed for dW1: stmatrix.trans, so that each 16 bytes hold 8 consecutive m of
// one output row n) and stored by TMA, one box per 16 KiB slab; the register stores of the
// weight-gradient epilogues above wait for their global writes in the tile's epilogue, while the
// TMA store is issued and left to drain. A tile falls back to those register stores when
//   - its expert has no rows: the k-loop had no stage to lend (the tile is all zeros), or
//   - it crosses the edge of the expert's gradient along the output's rows (m for dW2, n for dW1):
//     a box would write into the next expert's gradient (TMA clips only at the tensor's edges;
//     along the output's columns the tensor's edge is the gradient's, so TMA clips there).
template <class Cfg, bool kTransposed>
struct EpilogueWeightGradTma {
  using Store = TmaTileStore<Cfg>;
  using SharedStorage = typename Store::SharedStorage;
  using Fallback = std::conditional_t<kTransposed, EpilogueWeightGradTransposed, EpilogueWeightGrad>;
  static constexpr bool kBorrowsStage = true;  // stages its tile in the last mainloop stage (TmaTileStore)
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;

  struct Params {
    typename Store::Tma tma;  // out as [E*m, n] (dW2) or [E*n, m] (dW1) rows
    __nv_bfloat16* out;       // [E, m, n] or [E, n, m]
    int m;                    // the tile's M extent (see WeightGradStoreBase)
    int experts;
  };

  // The output as TMA sees it: every expert's gradient rows one after the other.
  static auto make_tma(__nv_bfloat16* out, int experts, int m, int n) {
    auto* d = reinterpret_cast<typename Store::Element*>(out);
    return kTransposed ? Store::make_tma(d, experts * n, m) : Store::make_tma(d, experts * m, n);
  }

  __device__ static void prefetch(Params const& p) { cute::prefetch_tma_descriptor(p.tma.get_tma_descriptor()); }
  __device__ static void finish(int consumer_thread) { Store::finish(consumer_thread); }

  template <int kTileM_, int kTileN_, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, VarlenKWorkTile const& work,
                               int n_total, typename Store::Staging const& staging, int consumer_thread) {
    using namespace cute;
    static_assert(kTileM_ == kTileM && kTileN_ == kTileN);
    static_assert(decltype(size(accum))::value == 2 * Store::kPacked, "m64 x kTileN fragment per thread");
    const int m0 = work.m_block * kTileM, n0 = work.n_block * kTileN;
    const bool inside = kTransposed ? n0 + kTileN <= n_total : m0 + kTileM <= p.m;
    if (work.rows == 0 || !inside) {
      Fallback::template apply<kTileM, kTileN>(typename Fallback::Params{p.out, p.m}, accum, coords, work, n_total,
                                               staging, consumer_thread);
      return;
    }
    Store::begin(consumer_thread);
    uint32_t packed[Store::kPacked];
    Store::pack(accum, packed);
    const int m_base = get<0>(coords(0));
    if constexpr (kTransposed) {
      Store::write_transposed(staging, packed, m_base);
      Store::template commit<Store::kSlabColsT>(p.tma, staging, work.expert * n_total + n0,
                                                work.m_block * Store::kSlabColsT, p.experts * n_total, p.m,
                                                consumer_thread);
    } else {
      Store::write(staging, packed, m_base);
      Store::template commit<Store::kSlabs>(p.tma, staging, work.expert * p.m + m0, work.n_block * Store::kSlabs,
                                            p.experts * p.m, n_total, consumer_thread);
    }
  }
};

}  // namespace sonicmoe::gemm
