// src/gemm/epilogue_store.cuh — plain epilogues: optional per-expert bias, bf16 store of the
// tile (down-projection Y, dX̃). Rows past the expert's end and columns past N are not stored.
//   EpilogueStore:       bf16x2 stores straight from registers (simple, synchronous).
//   EpilogueStoreTma<C>: full tiles go registers -> swizzled smem -> one asynchronous TMA store,
//                        so the consumers start the next tile's wgmmas while the TMA engine
//                        drains the tile; a tile cut by its expert's end (at most one per expert
//                        and n-block) falls back to register stores, because TMA clips only at
//                        the tensor's bounds, not at the expert's, and the rows past the end
//                        belong to the next expert's tile.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>

#include <cstdint>

#include "gemm/scheduler_grouped.cuh"

namespace sonicmoe::gemm {

struct EpilogueStore {
  struct Params {
    __nv_bfloat16* d;           // [num_rows, N]
    const __nv_bfloat16* bias;  // [E, N] or nullptr
    int64_t ldd;                // N
  };

  struct SharedStorage {};  // stores straight from registers
  __device__ static void prefetch(Params const&) {}
  __device__ static void finish(int) {}

  template <int kTileM, int kTileN, class Accum, class Coords, class AnyStorage>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, AnyStorage&, int /*consumer_thread*/) {
    const int m0 = work.m_block * kTileM;
    const int n0 = work.n_block * kTileN;
    const __nv_bfloat16* bias = p.bias ? p.bias + int64_t(work.expert) * n_total : nullptr;
#pragma unroll
    for (int i = 0; i < cute::size(accum); i += 2) {
      const int local_row = m0 + cute::get<0>(coords(i));
      const int col = n0 + cute::get<1>(coords(i));  // even; N is a multiple of 8
      if (local_row < work.rows && col < n_total) {
        float v0 = accum(i), v1 = accum(i + 1);
        if (bias) {
          v0 += __bfloat162float(bias[col]);
          v1 += __bfloat162float(bias[col + 1]);
        }
        const int64_t row = int64_t(work.row_start) + local_row;
        *reinterpret_cast<__nv_bfloat162*>(p.d + row * p.ldd + col) = __floats2bfloat162_rn(v0, v1);
      }
    }
  }
};

template <class Cfg>
struct EpilogueStoreTma {
  using Element = cutlass::bfloat16_t;
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;
  static constexpr int kConsumerThreads = 128 * Cfg::kConsumerWarpgroups;
  using TileShape = cute::Shape<cute::Int<kTileM>, cute::Int<kTileN>>;
  // 128-byte swizzle: the 8 rows a warp writes per store instruction land in 8 different 16-byte
  // bank groups (conflict-free), and TMA reads it natively in 64-column boxes.
  using SmemLayoutD = decltype(cute::tile_to_shape(cute::GMMA::Layout_K_SW128_Atom<Element>{}, TileShape{}));
  static_assert(kTileN % 64 == 0, "whole 64-column swizzle slabs");

  struct alignas(1024) SharedStorage {
    alignas(1024) Element d[cute::cosize_v<SmemLayoutD>];
  };

  static auto make_tma_d(Element* d, int rows, int n) {
    using namespace cute;
    auto g = make_tensor(make_gmem_ptr(d), make_layout(make_shape(rows, n), make_stride(int64_t(n), _1{})));
    return make_tma_copy(SM90_TMA_STORE{}, g, SmemLayoutD{}, TileShape{}, Int<1>{});
  }
  using TmaD = decltype(make_tma_d(nullptr, 1, 8));

  struct Params {
    TmaD tma_d;
    __nv_bfloat16* d;           // [num_rows, N]
    const __nv_bfloat16* bias;  // [E, N] or nullptr
    int64_t ldd;                // N
    int num_rows;
  };

  __device__ static void prefetch(Params const& p) { cute::prefetch_tma_descriptor(p.tma_d.get_tma_descriptor()); }

  // The CTA may not exit while a bulk store still reads its shared memory.
  __device__ static void finish(int consumer_thread) {
    if (consumer_thread == 0) cute::tma_store_wait<0>();
  }

  template <int kTileM_, int kTileN_, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, SharedStorage& ss, int consumer_thread) {
    using namespace cute;
    static_assert(kTileM_ == kTileM && kTileN_ == kTileN);
    const int m0 = work.m_block * kTileM;
    const int n0 = work.n_block * kTileN;
    if (m0 + kTileM > work.rows) {  // the expert ends inside this tile
      EpilogueStore::apply<kTileM, kTileN>(EpilogueStore::Params{p.d, p.bias, p.ldd}, accum, coords, work, n_total,
                                           ss, consumer_thread);
      return;
    }
    const __nv_bfloat16* bias = p.bias ? p.bias + int64_t(work.expert) * n_total : nullptr;
    Tensor sD = make_tensor(make_smem_ptr(ss.d), SmemLayoutD{});
    // The previous tile's store must have finished reading the buffer before it is rewritten.
    if (consumer_thread == 0) tma_store_wait<0>();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, 0);
    // SmemLayoutD written out (byte addresses checked against the CuTe tensor on the host):
    // 64-column slabs of kTileM rows, 128-byte rows, 16-byte chunk index XOR (row % 8).
    // The m64nNk16 accumulator fragment is ((2 columns, 2 row halves, N/8 column blocks)): value
    // i = v0 + 2*v1 + 4*j sits at (m_base + 8*v1, c_base + v0 + 8*j) with c_base < 8, so block j
    // has chunk j % 8 and slab j / 8. Writing through sD(m, c) with fp32 values live made ptxas
    // keep the swizzled addresses in registers and spill (80-600 bytes).
    const int m_base = get<0>(coords(0)), c_base = get<1>(coords(0));
    const int swizzle = m_base & 7;  // rows m_base and m_base + 8 share it
    static_assert(decltype(size(accum))::value == 2 * kTileN / 8 * 2, "m64 x kTileN fragment per thread");
    // Round to bf16 pairs first: 64 packed registers instead of 128 fp32 stay live while the
    // swizzled addresses are formed.
    uint32_t packed[kTileN / 4];
#pragma unroll
    for (int j = 0; j < kTileN / 8; ++j) {
      const int c = c_base + 8 * j;
      float b0 = 0.f, b1 = 0.f;
      if (bias && n0 + c < n_total) {
        b0 = __bfloat162float(bias[n0 + c]);
        b1 = __bfloat162float(bias[n0 + c + 1]);
      }
#pragma unroll
      for (int v1 = 0; v1 < 2; ++v1) {
        const int i = 4 * j + 2 * v1;
        const __nv_bfloat162 pair = __floats2bfloat162_rn(accum(i) + b0, accum(i + 1) + b1);
        packed[2 * j + v1] = *reinterpret_cast<const uint32_t*>(&pair);
      }
    }
    const uint32_t smem_base = cute::cast_smem_ptr_to_uint(ss.d);
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) {
      // Bits 3..5 (the 16-byte chunk, in elements) are zero in row_base: XOR places the chunk.
      const uint32_t row_base = smem_base + 2u * uint32_t((m_base + 8 * v1) * 64 + c_base);
#pragma unroll
      for (int j = 0; j < kTileN / 8; ++j) {
        const uint32_t addr = (row_base ^ uint32_t(((j & 7) ^ swizzle) << 4)) + uint32_t((j >> 3) * kTileM * 64 * 2);
        asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(packed[2 * j + v1]) : "memory");
      }
    }
    // Generic-proxy smem writes, then the async-proxy (TMA) read: fence, then gather the CTA.
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, 0);
    if (consumer_thread == 0) {
      Tensor mD = p.tma_d.get_tma_tensor(make_shape(p.num_rows, n_total));
      // Expert tiles start at any row: shift the coordinate origin to the tile's first row.
      Tensor gD = local_tile(domain_offset(make_coord(work.row_start + m0, 0), mD), TileShape{},
                             make_coord(0, work.n_block));
      auto [tDgD, tDsD] = tma_partition(p.tma_d, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sD), group_modes<0, 2>(gD));
      copy(p.tma_d, tDsD, tDgD);
      tma_store_arrive();
    }
  }
};

}  // namespace sonicmoe::gemm
