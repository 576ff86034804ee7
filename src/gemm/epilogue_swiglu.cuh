// src/gemm/epilogue_swiglu.cuh — up-projection epilogue: optional bias, store H (bf16) and the
// SwiGLU output A = silu(H_gate) * H_up computed from the fp32 accumulators.
//
// W1's rows are interleaved (row 2j = gate j, row 2j+1 = up j), so every wgmma accumulator pair
// a thread holds (columns c, c+1 with c even) is one (gate, up) pair: the activation needs no
// data exchange between threads. Rows past the expert's end and columns past N are not stored.
// First version: stores straight from registers (H as bf16x2 words, A as bf16); the smem-staged
// TMA store is a later speed step.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>

#include <cstdint>

#include "gemm/scheduler_grouped.cuh"

namespace sonicmoe::gemm {

struct EpilogueSwiGLU {
  struct Params {
    __nv_bfloat16* h;           // [num_rows, 2n]
    __nv_bfloat16* a;           // [num_rows, n]
    const __nv_bfloat16* bias;  // [E, 2n] or nullptr
    int64_t ldh;                // 2n
    int64_t lda;                // n
  };

  __device__ static float silu(float x) { return x / (1.0f + __expf(-x)); }

  struct SharedStorage {};  // stores straight from registers
  __device__ static void prefetch(Params const&) {}
  __device__ static void finish(int) {}

  // accum/coords: the thread's accumulator fragment and its (row, col) coordinates inside the
  // tile; n_total = 2n.
  template <int kTileM, int kTileN, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, SharedStorage&, int /*consumer_thread*/) {
    const int m0 = work.m_block * kTileM;
    const int n0 = work.n_block * kTileN;
    const __nv_bfloat16* bias = p.bias ? p.bias + int64_t(work.expert) * n_total : nullptr;
#pragma unroll
    for (int i = 0; i < cute::size(accum); i += 2) {
      const int local_row = m0 + cute::get<0>(coords(i));
      const int col = n0 + cute::get<1>(coords(i));  // even: a (gate, up) pair
      if (local_row < work.rows && col < n_total) {
        float gate = accum(i), up = accum(i + 1);
        if (bias) {
          gate += __bfloat162float(bias[col]);
          up += __bfloat162float(bias[col + 1]);
        }
        const int64_t row = int64_t(work.row_start) + local_row;
        *reinterpret_cast<__nv_bfloat162*>(p.h + row * p.ldh + col) = __floats2bfloat162_rn(gate, up);
        p.a[row * p.lda + (col >> 1)] = __float2bfloat16_rn(silu(gate) * up);
      }
    }
  }
};

}  // namespace sonicmoe::gemm
