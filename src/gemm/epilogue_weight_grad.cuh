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

struct EpilogueWeightGrad {
  struct Params {
    __nv_bfloat16* out;  // [E, m, n]
    int m;               // rows of each expert's gradient
  };

  struct SharedStorage {};
  __device__ static void prefetch(Params const&) {}
  __device__ static void finish(int) {}

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

}  // namespace sonicmoe::gemm
