// src/gemm/epilogue_weight_grad.cuh — epilogue of the weight-gradient roles (varlen K): the
// tile of expert e's dense [m, n] gradient, bf16 pairs straight from the registers. Output tiles
// are written once each (the reduction over the expert's rows is complete in the accumulators),
// so there is nothing to accumulate across CTAs and the result is deterministic.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>

#include <cstdint>

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

  template <int kTileM, int kTileN, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, VarlenKWorkTile const& work,
                               int n_total, SharedStorage&, int /*consumer_thread*/) {
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

  template <int kTileM, int kTileN, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, VarlenKWorkTile const& work,
                               int n_total, SharedStorage&, int /*consumer_thread*/) {
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

}  // namespace sonicmoe::gemm
