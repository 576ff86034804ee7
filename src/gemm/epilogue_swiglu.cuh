// src/gemm/epilogue_swiglu.cuh — up-projection epilogue: optional bias, store H (bf16) and the
// SwiGLU output A = silu(H_gate) * H_up computed from the fp32 accumulators.
//
// W1's rows are interleaved (row 2j = gate j, row 2j+1 = up j), so every wgmma accumulator pair
// a thread holds (columns c, c+1 with c even) is one (gate, up) pair: the activation needs no
// data exchange between threads. Rows past the expert's end and columns past N are not stored.
//   EpilogueSwiGLU:       both outputs straight from registers (H as bf16x2 words, A as bf16).
//   EpilogueSwiGLUTma<C>: for tiles inside an expert, H goes registers -> swizzled smem -> an
//                         asynchronous TMA store (2/3 of the bytes) while A is stored from
//                         registers, 8 bytes per lane after a transpose inside each quad
//                         (QuadTranspose); a tile cut by the expert's end stores H by row
//                         boxes (TmaTileStore::commit_rows) and A for its rows only; tiles cut
//                         by N use EpilogueSwiGLU.
// A is always computed from the fp32 (gate, up) values, before H is rounded to bf16. The bias
// is already in the accumulators (init_accumulators_with_bias, epilogue_store.cuh).
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>

#include <cstdint>

#include "gemm/epilogue_store.cuh"
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

  // sigmoid(x) with two MUFU operations and one multiply: exp(-x) as ex2.approx.ftz (results
  // below 2^-126 flush to 0, where the sigmoid is 1 either way, so no denormal fix-up) and the
  // approximate division (MUFU.RCP, ~2 ulp). IEEE `/` compiled to a reciprocal with Newton steps
  // and a checked slow path (a CALL) per element: with it the up-proj kernel had 6984 SASS
  // instructions, with this 5128 (scripts/sass.sh). dH recomputes A with the same function.
  // For very negative x, exp(-x) overflows (or 1 + e exceeds 2^126, where __fdividef returns 0):
  // the result is 0 either way, the right limit.
  __device__ static float sigmoid(float x) {
    float e;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -1.4426950408889634f));
    return __fdividef(1.0f, 1.0f + e);
  }
  __device__ static float silu(float x) { return x * sigmoid(x); }

  struct SharedStorage {};  // stores straight from registers
  __device__ static void prefetch(Params const&) {}
  __device__ static void finish(int) {}
  SONICMOE_EPILOGUE_BIAS_FROM_PARAMS

  // accum/coords: the thread's accumulator fragment and its (row, col) coordinates inside the
  // tile; n_total = 2n.
  template <int kTileM, int kTileN, class Accum, class Coords, class AnyStorage>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, AnyStorage&, int /*consumer_thread*/) {
    const int m0 = work.m_block * kTileM;
    const int n0 = work.n_block * kTileN;
#pragma unroll
    for (int i = 0; i < cute::size(accum); i += 2) {
      const int local_row = m0 + cute::get<0>(coords(i));
      const int col = n0 + cute::get<1>(coords(i));  // even: a (gate, up) pair
      if (local_row < work.rows && col < n_total) {
        const float gate = accum(i), up = accum(i + 1);
        const int64_t row = int64_t(work.row_start) + local_row;
        *reinterpret_cast<__nv_bfloat162*>(p.h + row * p.ldh + col) = __floats2bfloat162_rn(gate, up);
        p.a[row * p.lda + (col >> 1)] = __float2bfloat16_rn(silu(gate) * up);
      }
    }
  }
};

// A 4 x 4 transpose of bf16 values inside a quad (the 4 lanes that share a row of the m64
// accumulator fragment), so that A leaves in 8-byte stores. Lane q of the quad holds A columns
// q + 4*jj (jj = 0..3) of a 16-column group, packed as r0 = (jj 0, jj 1), r1 = (jj 2, jj 3); after
// two shuffles it holds columns 4q .. 4q+3 as (w0, w1), the 8 bytes it stores. Stored one bf16
// per lane (the first version), A took 64 2-byte stores per thread and tile: ncu showed the
// up-proj consumers stalled in their epilogue on registers still waiting for those stores to
// read them (long scoreboard), about 30% of their time. Host-callable: the selectors and the
// whole exchange are emulated in tests/cpp/gpu/test_smem_addressing.cu.
struct QuadTranspose {
  // PRMT / __byte_perm selectors of lane q: which bf16 halves (a: bytes 0-3, b: bytes 4-7) go
  // where. After the first shuffle (partner q ^ 2) the lane holds jj pair `hi` of itself (mine)
  // and of lane q ^ 2 (other); it keeps jj = q and sends the other jj to lane q ^ 1.
  struct Selectors {
    bool hi;        // q & 2: keeps r1 (jj 2, 3), sends r0
    uint32_t keep;  // (mine, other) -> (mine[q&1], other[q&1]) = columns of lanes q, q^2
    uint32_t send;  // (mine, other) -> (mine[1-(q&1)], other[1-(q&1)]), to lane q ^ 1
    uint32_t w0;    // (keep, received) -> columns 4q, 4q+1
    uint32_t w1;    // (keep, received) -> columns 4q+2, 4q+3
  };
  CUTE_HOST_DEVICE static constexpr uint32_t halves(int h0, int h1) {
    return uint32_t(2 * h0) | uint32_t(2 * h0 + 1) << 4 | uint32_t(2 * h1) << 8 | uint32_t(2 * h1 + 1) << 12;
  }
  // keep = (lane q, lane q^2), received = (lane q^1, lane q^3): the half holding lane p's value
  // is H(p ^ q) with H(0) = 0, H(2) = 1, H(1) = 2, H(3) = 3.
  CUTE_HOST_DEVICE static constexpr int half_of(int d) { return ((d & 1) << 1) | (d >> 1); }
  CUTE_HOST_DEVICE static constexpr Selectors selectors(int q) {
    const int lo = q & 1;
    return Selectors{(q & 2) != 0, halves(lo, 2 + lo), halves(1 - lo, 3 - lo), halves(half_of(q), half_of(1 ^ q)),
                     halves(half_of(2 ^ q), half_of(3 ^ q))};
  }
};

template <class Cfg>
struct EpilogueSwiGLUTma {
  using Store = TmaTileStore<Cfg>;
  using Element = typename Store::Element;
  using SharedStorage = typename Store::SharedStorage;
  static constexpr bool kBorrowsStage = true;  // stages its tile in the last mainloop stage (TmaTileStore)
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;

  static auto make_tma_h(Element* h, int rows, int n) { return Store::make_tma(h, rows, n); }

  struct Params {
    typename Store::Tma tma_h;
    typename Store::RowBoxTmas tail_boxes;  // H again, for tiles cut by the expert's end
    __nv_bfloat16* h;           // [num_rows, 2n]
    __nv_bfloat16* a;           // [num_rows, n]
    const __nv_bfloat16* bias;  // [E, 2n] or nullptr
    int64_t ldh;                // 2n
    int64_t lda;                // n
    int num_rows;
  };

  __device__ static void prefetch(Params const& p) { cute::prefetch_tma_descriptor(p.tma_h.get_tma_descriptor()); }
  __device__ static void finish(int consumer_thread) { Store::finish(consumer_thread); }
  SONICMOE_EPILOGUE_BIAS_FROM_PARAMS

  template <int kTileM_, int kTileN_, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, typename Store::Staging const& ss, int consumer_thread) {
    using namespace cute;
    static_assert(kTileM_ == kTileM && kTileN_ == kTileN);
    static_assert(decltype(size(accum))::value == 2 * Store::kPacked, "m64 x kTileN fragment per thread");
    const int m0 = work.m_block * kTileM;
    const int n0 = work.n_block * kTileN;
    if (n0 + kTileN > n_total) {  // N ends inside this tile: A's stores would need column checks
      EpilogueSwiGLU::apply<kTileM, kTileN>(EpilogueSwiGLU::Params{p.h, p.a, p.bias, p.ldh, p.lda}, accum, coords,
                                            work, n_total, ss, consumer_thread);
      return;
    }
    const int m_base = get<0>(coords(0)), c_base = get<1>(coords(0));  // c_base = 2 * (lane % 4)
    const int q = c_base >> 1;
    const QuadTranspose::Selectors sel = QuadTranspose::selectors(q);
    Store::begin(consumer_thread);
    // This lane's 8 bytes of A in 16-column group t of row half v1: a_at[v1] + 16 t.
    // Rows past the expert's end (its last tile) store no A; H goes out by row boxes (commit_rows).
    __nv_bfloat16* a_at[2];
    bool row_ok[2];
#pragma unroll
    for (int v1 = 0; v1 < 2; ++v1) {
      a_at[v1] = p.a + (int64_t(work.row_start) + m0 + m_base + 8 * v1) * p.lda + n0 / 2 + 4 * q;
      row_ok[v1] = m0 + m_base + 8 * v1 < work.rows;
    }
    const typename Store::MatrixWriter writer(ss, m_base);
    // Accumulator pair (j, v1) = values 4j + 2 v1, +1: (gate, up) of A column q + 4j.
#pragma unroll
    for (int t = 0; t < kTileN / 32; ++t) {
      uint32_t h_pair[2][4];  // H pairs (v1, j = 4t + jj)
      float act[2][4];
#pragma unroll
      for (int v1 = 0; v1 < 2; ++v1) {
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int i = 4 * (4 * t + jj) + 2 * v1;
          const float gate = accum(i), up = accum(i + 1);
          const __nv_bfloat162 pair = __floats2bfloat162_rn(gate, up);
          h_pair[v1][jj] = *reinterpret_cast<const uint32_t*>(&pair);
          act[v1][jj] = EpilogueSwiGLU::silu(gate) * up;
        }
      }
      writer.put(4 * t, h_pair[0][0], h_pair[1][0], h_pair[0][1], h_pair[1][1]);
      writer.put(4 * t + 2, h_pair[0][2], h_pair[1][2], h_pair[0][3], h_pair[1][3]);
#pragma unroll
      for (int v1 = 0; v1 < 2; ++v1) {
        const __nv_bfloat162 p01 = __floats2bfloat162_rn(act[v1][0], act[v1][1]);
        const __nv_bfloat162 p23 = __floats2bfloat162_rn(act[v1][2], act[v1][3]);
        const uint32_t r0 = *reinterpret_cast<const uint32_t*>(&p01), r1 = *reinterpret_cast<const uint32_t*>(&p23);
        const uint32_t mine = sel.hi ? r1 : r0;
        const uint32_t other = __shfl_xor_sync(0xffffffffu, sel.hi ? r0 : r1, 2);
        const uint32_t keep = __byte_perm(mine, other, sel.keep);
        const uint32_t received = __shfl_xor_sync(0xffffffffu, __byte_perm(mine, other, sel.send), 1);
        if (row_ok[v1])
          *reinterpret_cast<uint2*>(a_at[v1] + 16 * t) =
              make_uint2(__byte_perm(keep, received, sel.w0), __byte_perm(keep, received, sel.w1));
      }
    }
    if (m0 + kTileM <= work.rows) {
      Store::commit(p.tma_h, ss, work.row_start + m0, work.n_block, p.num_rows, n_total, consumer_thread);
    } else {
      Store::commit_rows(p.tail_boxes, ss, work.row_start + m0, work.n_block, work.rows - m0, n_total,
                         consumer_thread);
    }
  }
};

}  // namespace sonicmoe::gemm
