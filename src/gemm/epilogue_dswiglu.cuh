// src/gemm/epilogue_dswiglu.cuh — the down-projection activation-gradient epilogue (kernel 4 of
// DESIGN.md §4). The mainloop computed acc = dA' = dO[gather]·W2_e (the unscaled gradient of A);
// per element (row r, column j) with s = scores[scatter_idx[r]] and (g, u) = H[r, 2j..2j+1]:
//   A_j   = silu(g)·u                       (recomputed: A is never cached)
//   dH    = dSwiGLU(g, u; s·acc)            -> grad_h [TK, 2n], bf16 pairs (dgate, dup)
//   A'_j  = s·A_j                           -> a_scaled [TK, n] (the dW2 GEMM's operand)
//   dS    = Σ_j acc·A_j over the tile's columns -> ds_partial[scatter_idx[r], n_block] (fp32)
// The score gradient needs no Y: <dO, Y> = <dA', A>. Partial sums per N tile go to their own
// column of ds_partial — no atomics, so the result is bitwise deterministic; a row-sum finishes
// it. Rows of one thread live in the wgmma layout's quads (4 lanes share a row), so the row sum
// is a register sum plus two quad shuffles. Stores go straight from registers.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>

#include <cstdint>

#include "gemm/epilogue_swiglu.cuh"
#include "gemm/scheduler_grouped.cuh"

namespace sonicmoe::gemm {

struct EpilogueDSwiGLU {
  struct Params {
    const __nv_bfloat16* h;    // [num_rows, 2n] pre-activation saved by the forward
    const float* scores;       // [num_rows] flat order
    const int32_t* scatter;    // [num_rows] grouped row -> flat slot
    __nv_bfloat16* grad_h;     // [num_rows, 2n]
    __nv_bfloat16* a_scaled;   // [num_rows, n]
    float* ds_partial;         // [num_rows, ds_cols] flat order
    int64_t n;                 // intermediate size (N of this GEMM)
    int ds_cols;               // N tiles = ceil(n / kTileN)
  };

  // H is read in batches of kLoadBatch accumulator pairs, every load of a batch issued before the
  // batch's first store. The first version loaded, computed and stored one pair at a time: the
  // compiler may not move a load of H above a store to grad_h (the pointers could alias), so the
  // PTX alternated ld/st strictly and each thread waited 64 full memory round trips per tile —
  // dH ran at 209-220 TFLOPS (H200, 7B n=256) while every other role ran at 370-530.
  // 16 pairs = 32 registers next to the 128 accumulators (0 spilled; 32 pairs spill: 148 B in the
  // first version, 24 B with the per-row addresses).
  // The batch's loads are coherent `ld.global` in inline asm (volatile, memory clobber). With
  // __ldg (ld.global.nc, which ptxas may move past any store) each load was sunk to its use,
  // behind the previous pair's stores, even when the PTX had the batch in order: the round trips
  // were serialized again (ncu: long-scoreboard stalls on the first use of every load; dH 316 ->
  // 288 TFLOPS at 7B n=256). A coherent load may not pass a store that could alias it, so the
  // batch stays ahead of its stores. Predicated: lanes whose pair is outside the expert's rows or
  // outside N issue no load and read (0, 0).
  static constexpr int kLoadBatch = 16;

  __device__ static uint2 load_h_pair(const uint2* at, bool pred) {
    uint2 v;
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n mov.b32 %0, 0;\n mov.b32 %1, 0;\n"
        " @p ld.global.v2.u32 {%0, %1}, [%2];\n}\n"
        : "=r"(v.x), "=r"(v.y)
        : "l"(at), "r"(int(pred))
        : "memory");
    return v;
  }

  struct SharedStorage {};
  __device__ static void prefetch(Params const&) {}
  __device__ static void finish(int) {}

  template <int kTileM, int kTileN, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, SharedStorage&, int /*consumer_thread*/) {
    const int m0 = work.m_block * kTileM;
    // The m64 wgmma accumulator fragment: pair k (values 2k, 2k+1) sits at row r0 + 8*(k & 1),
    // columns c0 + 8*(k >> 1) and the next (tests/cpp/gpu/test_smem_addressing.cu checks this
    // against CuTe). Every address is set up per row once per tile, so a pair's loads and stores
    // take immediate offsets.
    const int r0 = cute::get<0>(coords(0));
    const int c0 = work.n_block * kTileN + cute::get<1>(coords(0));  // even
    const int j_end = c0 < n_total ? (n_total - c0 + 7) / 8 : 0;     // pairs inside N (N % 8 == 0)
    bool row_ok[2];
    int32_t slot[2];
    float s[2], ds[2] = {0.f, 0.f};
    const uint2* h_at[2];
    uint2* dh_at[2];
    __nv_bfloat162* as_at[2];
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) {
      const int local = m0 + r0 + 8 * v1;
      row_ok[v1] = local < work.rows;
      const int64_t row = row_ok[v1] ? int64_t(work.row_start) + local : 0;
      slot[v1] = row_ok[v1] ? __ldg(p.scatter + row) : 0;
      // H and dH: (gate, up) bf16 pairs, 4 per 8 bytes; A': bf16 pairs.
      h_at[v1] = reinterpret_cast<const uint2*>(p.h + row * 2 * p.n + 2 * c0);
      dh_at[v1] = reinterpret_cast<uint2*>(p.grad_h + row * 2 * p.n + 2 * c0);
      as_at[v1] = reinterpret_cast<__nv_bfloat162*>(p.a_scaled + row * p.n + c0);
    }
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) s[v1] = row_ok[v1] ? __ldg(p.scores + slot[v1]) : 0.f;
    constexpr int kPairs = decltype(cute::size(accum))::value / 2;
    static_assert(kPairs % kLoadBatch == 0 && kLoadBatch % 2 == 0, "whole batches of accumulator pairs");
#pragma unroll
    for (int b = 0; b < kPairs; b += kLoadBatch) {
      // H[row, 2col .. 2col+3] = (g0, u0, g1, u1): one 8-byte load per pair, the batch's loads
      // all in flight before its first store.
      uint2 packed[kLoadBatch];
#pragma unroll
      for (int q = 0; q < kLoadBatch; ++q) {
        const int k = b + q, v1 = k & 1, j = k >> 1;
        packed[q] = load_h_pair(h_at[v1] + 4 * j, row_ok[v1] && j < j_end);
      }
#pragma unroll
      for (int q = 0; q < kLoadBatch; ++q) {
        const int k = b + q, v1 = k & 1, j = k >> 1;
        if (!(row_ok[v1] && j < j_end)) continue;
        const float2 gu0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed[q].x));
        const float2 gu1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&packed[q].y));
        float dgate[2], dup[2], a[2];
        const float g[2] = {gu0.x, gu1.x}, u[2] = {gu0.y, gu1.y}, acc[2] = {accum(2 * k), accum(2 * k + 1)};
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float sig = EpilogueSwiGLU::sigmoid(g[c]);  // as in the forward
          const float silu = g[c] * sig;
          a[c] = silu * u[c];
          const float da = s[v1] * acc[c];
          dgate[c] = da * u[c] * sig * (1.0f + g[c] * (1.0f - sig));
          dup[c] = da * silu;
          ds[v1] += acc[c] * a[c];
        }
        uint2 out;
        *reinterpret_cast<__nv_bfloat162*>(&out.x) = __floats2bfloat162_rn(dgate[0], dup[0]);
        *reinterpret_cast<__nv_bfloat162*>(&out.y) = __floats2bfloat162_rn(dgate[1], dup[1]);
        dh_at[v1][4 * j] = out;
        as_at[v1][4 * j] = __floats2bfloat162_rn(s[v1] * a[0], s[v1] * a[1]);
      }
    }
    float ds_lo = ds[0], ds_hi = ds[1];
    const bool lo_ok = row_ok[0], hi_ok = row_ok[1];
    const int32_t slot_lo = slot[0], slot_hi = slot[1];
    // The four lanes of a quad hold the rest of the same two rows.
    ds_lo += __shfl_xor_sync(0xffffffffu, ds_lo, 1);
    ds_lo += __shfl_xor_sync(0xffffffffu, ds_lo, 2);
    ds_hi += __shfl_xor_sync(0xffffffffu, ds_hi, 1);
    ds_hi += __shfl_xor_sync(0xffffffffu, ds_hi, 2);
    if ((threadIdx.x & 3) == 0) {
      if (lo_ok) p.ds_partial[int64_t(slot_lo) * p.ds_cols + work.n_block] = ds_lo;
      if (hi_ok) p.ds_partial[int64_t(slot_hi) * p.ds_cols + work.n_block] = ds_hi;
    }
  }
};

}  // namespace sonicmoe::gemm
