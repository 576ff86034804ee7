// src/gemm/epilogue_store.cuh — plain epilogues: optional per-expert bias, bf16 store of the
// tile (down-projection Y, dX̃). Rows past the expert's end and columns past N are not stored.
//   EpilogueStoreTma<C>: registers -> swizzled smem (mostly the tile's last mainloop stage,
//                        lent for it: TmaTileStore) -> asynchronous TMA stores, so the
//                        consumers start the next tile's wgmmas while the TMA engine drains the
//                        tile; a tile cut by its expert's end (at most one per expert and
//                        n-block) goes out as boxes of fewer rows (TmaTileStore::commit_rows),
//                        because TMA clips only at the tensor's bounds, not at the expert's, and
//                        the rows past the end belong to the next expert's tile.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/bfloat16.h>

#include <bit>
#include <cstdint>
#include <string>

#include "gemm/scheduler_grouped.cuh"
#include "sonicmoe/status.h"

namespace sonicmoe::gemm {

// Accumulators start from the bias: before a tile's first wgmma the consumers write bias_e[col]
// (or 0 without bias) into them and the k-loop accumulates on top. Two measured reasons:
//   - adding the bias in the TMA epilogues made ptxas hoist the 32 bias loads and spill;
//   - the write must happen for every tile, bias or not: when it was conditional ptxas reported
//     C7515 ("wgmma.mma_async instructions are serialized due to non wgmma instructions
//     defining accumulator registers") for the whole kernel.
template <int kTileN, class Accum, class Coords>
__device__ void init_accumulators_with_bias(const __nv_bfloat16* bias, Accum& accum, Coords const& coords,
                                            WorkTile const& work, int n_total) {
  const __nv_bfloat16* row = bias + int64_t(work.expert) * n_total;
  const int n0 = work.n_block * kTileN;
#pragma unroll
  for (int i = 0; i < cute::size(accum); i += 2) {
    const int col = n0 + cute::get<1>(coords(i));  // even; N is a multiple of 8
    float2 b = make_float2(0.f, 0.f);
    if (bias != nullptr && col < n_total) b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + col));
    accum(i) = b.x;
    accum(i + 1) = b.y;
  }
}

// Every epilogue forwards its bias pointer with this.
#define SONICMOE_EPILOGUE_BIAS_FROM_PARAMS                                                               \
  template <int kTileN_, class Accum_, class Coords_>                                                    \
  __device__ static void init_accumulators(Params const& p, Accum_& accum, Coords_ const& coords,        \
                                           WorkTile const& work, int n_total) {                          \
    init_accumulators_with_bias<kTileN_>(p.bias, accum, coords, work, n_total);                          \
  }

// Registers -> 128-byte-swizzled shared-memory tile -> asynchronous TMA stores, for a full
// kTileM x kTileN bf16 tile. Used by every TMA-store epilogue. Protocol per tile (all consumer
// threads): begin() (the previous stores have finished reading), write() or write_transposed(),
// commit() (proxy fence, barrier, one thread issues the stores); finish() before the CTA exits.
//
// Where the tile is staged: in 64-column slabs of kTileM x 64 (16 KiB, each one 128-byte swizzle
// block that TMA stores as one box). The tile's last mainloop stage lends its A buffer (one slab)
// and B buffer (kTileN / kTileM slabs) (consume_k_tiles<kLend>); the rest (one slab
// for 128 x 256) is this epilogue's own shared memory. With a whole 64 KiB staging tile of its
// own, the 128x256 configurations had room for 3 stages of 48 KiB; borrowing the last stage
// leaves room for 4.
template <class Cfg>
struct TmaTileStore {
  using Element = cutlass::bfloat16_t;
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;
  static constexpr int kConsumerThreads = 128 * Cfg::kConsumerWarpgroups;
  static constexpr int kPacked = kTileN / 4;  // bf16x2 words per consumer thread
  static constexpr int kSlabs = kTileN / 64;
  static constexpr int kSlabElements = kTileM * 64;
  static constexpr uint32_t kSlabBytes = kSlabElements * sizeof(Element);
  static constexpr int kLentBSlabs = kTileN / kTileM;        // a stage's B buffer (kTileN x 64)
  static constexpr int kOwnSlabs = kSlabs - 1 - kLentBSlabs;  // after A (one slab) and B
  static_assert(Cfg::kTileK == 64 && kTileN % kTileM == 0 && kOwnSlabs >= 1 && !Cfg::kPingPong,
                "a cooperative tile whose stage buffers are whole slabs");
  using TileShape = cute::Shape<cute::Int<kTileM>, cute::Int<kTileN>>;
  using SlabShape = cute::Shape<cute::Int<kTileM>, cute::_64>;
  // 128-byte swizzle: the 8 rows a warp writes per store instruction land in 8 different 16-byte
  // bank groups (conflict-free), and TMA reads it natively in 64-column boxes. SmemLayout: the
  // whole tile as contiguous slabs (what the host test checks the addressing against).
  using SlabLayout = decltype(cute::tile_to_shape(cute::GMMA::Layout_K_SW128_Atom<Element>{}, SlabShape{}));
  using SmemLayout = decltype(cute::tile_to_shape(cute::GMMA::Layout_K_SW128_Atom<Element>{}, TileShape{}));
  static_assert(kTileN % 64 == 0, "whole 64-column swizzle slabs");

  struct alignas(1024) SharedStorage {
    alignas(1024) Element own[kOwnSlabs][kSlabElements];
  };

  // The buffers of one tile's staging: slab 0 = lent A, slabs 1 .. kLentBSlabs = lent B, then own.
  struct Staging {
    Element* lent_a;
    Element* lent_b;
    Element* own;
  };
  __device__ static Staging staging(SharedStorage& ss, Element* lent_a, Element* lent_b) {
    return {lent_a, lent_b, ss.own[0]};
  }
  // Slab s of the staging, as a pointer (slab_size = kSlabElements) or a shared address
  // (kSlabBytes); s is a compile-time index after unrolling, so the offset is an immediate.
  template <class T>
  CUTE_HOST_DEVICE static T slab(T lent_a, T lent_b, T own, int s, int slab_size) {
    if (s == 0) return lent_a;
    if (s <= kLentBSlabs) return lent_b + (s - 1) * slab_size;
    return own + (s - 1 - kLentBSlabs) * slab_size;
  }

  // The output tensor [rows, n] row-major as TMA sees it, one slab per box.
  static auto make_tma(Element* d, int rows, int n) {
    using namespace cute;
    auto g = make_tensor(make_gmem_ptr(d), make_layout(make_shape(rows, n), make_stride(int64_t(n), _1{})));
    return make_tma_copy(SM90_TMA_STORE{}, g, SlabLayout{}, SlabShape{}, Int<1>{});
  }
  using Tma = decltype(make_tma(nullptr, 1, 8));

  // A tile cut by its expert's end (its last m-block) keeps the TMA store too: TMA clips only at
  // the tensor's edges, and the rows past the expert's end belong to the next expert's tile, so
  // commit_rows() stores the tile's first `rows` rows as boxes of the binary digits of `rows`
  // (kTileM/2, ..., 2, 1 rows x 64 columns, one tensor map per height; at most kRowBoxes boxes
  // per slab). A box starting at any staged row reads the bytes a whole-slab box would there: the
  // 128-byte swizzle follows the shared address (chunk bits 4-6 XOR row bits 7-9), and a box's
  // shared address need only be 128-byte aligned. Before, those tiles (one per expert and n-block,
  // ~6% of the tiles at 2048 rows per expert) fell back to synchronous register stores.
  static constexpr int kRowBoxes = std::countr_zero(unsigned(kTileM));  // heights kTileM/2 .. 1
  struct RowBoxTmas {
    cute::TmaDescriptor box[kRowBoxes];  // box[b]: (kTileM/2 >> b) rows x 64 columns
  };
  // The output tensor [rows, n] row-major at `d` (n a multiple of 8 and `d` 16-byte aligned, as the
  // launchers validate).
  static Status make_row_box_tmas(Element* d, int rows, int n, RowBoxTmas* out) {
    for (int b = 0; b < kRowBoxes; ++b) {
      cuuint64_t dims[2] = {cuuint64_t(n), cuuint64_t(rows)};
      cuuint64_t strides[1] = {cuuint64_t(n) * sizeof(Element)};
      cuuint32_t box[2] = {64, cuuint32_t(kTileM / 2 >> b)};
      cuuint32_t element_strides[2] = {1, 1};
      const CUresult r = CUTLASS_CUDA_DRIVER_WRAPPER_CALL(cuTensorMapEncodeTiled)(
          &out->box[b], CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, d, dims, strides, box, element_strides,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_NONE,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
      if (r != CUDA_SUCCESS)
        return Status::error(StatusCode::cuda_error,
                             "cuTensorMapEncodeTiled (tail-row store boxes) failed with CUresult " + std::to_string(int(r)));
    }
    return Status();
  }

  // Two jobs: the previous tile's stores have finished reading the own slab, and both consumer
  // warpgroups have drained their wgmmas, which read all of the lent stage's B buffer (each
  // warpgroup writes B slabs in its own rows only after the other's wgmmas retired). The second
  // makes this barrier necessary even though the lent stage comes back only after a store wait.
  __device__ static void begin(int consumer_thread) {
    if (consumer_thread == 0) cute::tma_store_wait<0>();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, 0);
  }

  // The accumulator fragment, in bf16 pairs: pair (v1, j) of a thread sits at tile coordinates
  // (m_base + 8*v1, c_base + 8*j), with m_base = warp_row0 + lane/4 (warp_row0: the warp's first
  // row, a multiple of 16) and c_base = 2*(lane%4). Across the warp, pair (v1, j) is exactly the
  // fragment of one 8x8 bf16 matrix (rows warp_row0 + 8*v1 .., columns 8*j ..) as stmatrix takes
  // it, so one stmatrix.x4 writes pairs (0, j), (1, j), (0, j+1), (1, j+1) of every lane: 16
  // instructions per thread and tile instead of 64 32-bit stores. Lane L gives the address of row
  // L % 8 of matrix L / 8. The layout written out (byte addresses checked against the CuTe
  // tensor on the host): 64-column slabs of kTileM rows, 128-byte rows, 16-byte chunk index XOR
  // (row % 8). Writing through a CuTe tensor with fp32 values live made ptxas keep the swizzled
  // addresses and spill.
  struct MatrixWriter {
    uint32_t lane_offset;  // this lane's row of its matrix for j = 0, swizzled, inside a slab
    uint32_t lent_a, lent_b, own;
    // Host-callable, like address(): tests/cpp/gpu/test_smem_addressing.cu checks both.
    CUTE_HOST_DEVICE static constexpr uint32_t lane_address(uint32_t tile, int warp_row0, int lane) {
      const int rr = lane % 8, v1 = (lane / 8) & 1, next_j = lane / 16;
      // Matrix (v1, j + next_j) for even j: its chunk is ((j + next_j) ^ row) % 8 = (j % 8) ^
      // next_j ^ rr, so the lane's part of the XOR is fixed and j's is a compile-time constant.
      return (tile + 2u * uint32_t((warp_row0 + 8 * v1 + rr) * 64)) ^ uint32_t((next_j ^ rr) << 4);
    }
    // Offset inside slab j / 8. The hardware swizzle (stmatrix writer and TMA reader alike) works
    // on absolute address bits 4-9, so the slabs must be 1024-byte aligned for this 0-based
    // offset to land where TMA reads it.
    CUTE_HOST_DEVICE static constexpr uint32_t slab_offset(uint32_t lane_offset, int j) {
      return lane_offset ^ uint32_t((j & 7) << 4);
    }
    // Offset in a tile whose slabs are contiguous (the host test's view).
    CUTE_HOST_DEVICE static constexpr uint32_t address(uint32_t lane_offset, int j) {  // j even
      return slab_offset(lane_offset, j) + uint32_t(j >> 3) * kSlabBytes;
    }
    __device__ MatrixWriter(Staging const& st, int m_base)
        : lane_offset(lane_address(0, m_base & ~7, int(threadIdx.x % 32))),
          lent_a(cute::cast_smem_ptr_to_uint(st.lent_a)),
          lent_b(cute::cast_smem_ptr_to_uint(st.lent_b)),
          own(cute::cast_smem_ptr_to_uint(st.own)) {}
    // pairs (v1 = 0, j), (1, j), (0, j + 1), (1, j + 1); j even.
    __device__ void put(int j, uint32_t p0j, uint32_t p1j, uint32_t p0k, uint32_t p1k) const {
      const uint32_t addr = slab(lent_a, lent_b, own, j >> 3, int(kSlabBytes)) + slab_offset(lane_offset, j);
      asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(p0j),
                   "r"(p1j), "r"(p0k), "r"(p1k)
                   : "memory");
    }
  };

  // The accumulators rounded to bf16 pairs, packed[k] = values 2k, 2k+1 = pair (v1, j) with
  // k = 2*j + v1. Rounded first, 64 packed registers instead of 128 fp32 stay live while the
  // swizzled addresses are formed.
  template <class Accum>
  __device__ static void pack(Accum const& accum, uint32_t (&packed)[kPacked]) {
#pragma unroll
    for (int k = 0; k < kPacked; ++k) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(accum(2 * k), accum(2 * k + 1));
      packed[k] = *reinterpret_cast<const uint32_t*>(&pair);
    }
  }

  // packed[2*j + v1]: pair (v1, j) of the thread.
  __device__ static void write(Staging const& st, const uint32_t (&packed)[kPacked], int m_base) {
    const MatrixWriter writer(st, m_base);
#pragma unroll
    for (int j = 0; j < kTileN / 8; j += 2) writer.put(j, packed[2 * j], packed[2 * j + 1], packed[2 * j + 2], packed[2 * j + 3]);
  }

  // The tile staged transposed, as the kTileN x kTileM tile Cᵀ (dW1 is computed as C = xᵀ·dH and
  // stored as dW1 = Cᵀ). stmatrix.trans writes each 8x8 matrix of the fragment transposed: lane L
  // gives the address of row L % 8 of the stored matrix L / 8, i.e. of column 8*(j + (L/8)/2) +
  // L % 8 of C, and the 8 C rows m_base & ~7 + 8*((L/8) % 2) .. +8 land in that row's 16 bytes.
  // Slabs of kTileM Cᵀ rows x 64 Cᵀ columns; slab s holds Cᵀ rows kTileM*(s / kSlabColsT) .. and
  // columns 64*(s % kSlabColsT) .., so a warp's 16 C rows stay in the slab column of its
  // warpgroup (checked byte for byte on the host).
  static constexpr int kSlabColsT = kTileM / 64;
  static constexpr int kColsPerSlabRowT = kTileM / 8;  // C columns j (groups of 8) per slab row
  static_assert(kTileM % 64 == 0 && kColsPerSlabRowT % 2 == 0, "x4 matrices stay inside one slab");
  static constexpr int kSlabRowsT = kSlabs / kSlabColsT;
  struct TransposedMatrixWriter {
    uint32_t lane_offset;             // this lane's Cᵀ row for j = 0, swizzled, inside its slab
    uint32_t slab_base[kSlabRowsT];   // the slabs of the warp's slab column (its 64 C rows)
    CUTE_HOST_DEVICE static constexpr uint32_t lane_address(int warp_row0, int lane) {
      const int rr = lane % 8, v1 = (lane / 8) & 1, next_j = lane / 16;
      const int chunk = (warp_row0 % 64) / 8 + v1;  // the 16 bytes of C rows warp_row0 + 8*v1 ..
      return uint32_t((8 * next_j + rr) * 128) + uint32_t((chunk ^ rr) << 4);
    }
    // Slab and offset of pair group j (even): Cᵀ rows 8j .. lie kTileM-row slabs further down.
    CUTE_HOST_DEVICE static constexpr int slab_index(int slab_col, int j) {
      return (j / kColsPerSlabRowT) * kSlabColsT + slab_col;
    }
    CUTE_HOST_DEVICE static constexpr uint32_t slab_offset(uint32_t lane_offset, int j) {
      return lane_offset + uint32_t((j % kColsPerSlabRowT) * 8 * 128);  // 8 Cᵀ rows of 128 bytes per j
    }
    __device__ TransposedMatrixWriter(Staging const& st, int m_base)
        : lane_offset(lane_address(m_base & ~7, int(threadIdx.x % 32))) {
      const uint32_t a = cute::cast_smem_ptr_to_uint(st.lent_a), b = cute::cast_smem_ptr_to_uint(st.lent_b),
                     o = cute::cast_smem_ptr_to_uint(st.own);
#pragma unroll
      for (int r = 0; r < kSlabRowsT; ++r)
        slab_base[r] = slab(a, b, o, slab_index((m_base & ~7) / 64, r * kColsPerSlabRowT), int(kSlabBytes));
    }
    // pairs (v1 = 0, j), (1, j), (0, j + 1), (1, j + 1); j even.
    __device__ void put(int j, uint32_t p0j, uint32_t p1j, uint32_t p0k, uint32_t p1k) const {
      const uint32_t addr = slab_base[j / kColsPerSlabRowT] + slab_offset(lane_offset, j);
      asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
                   "r"(p0j), "r"(p1j), "r"(p0k), "r"(p1k)
                   : "memory");
    }
  };

  __device__ static void write_transposed(Staging const& st, const uint32_t (&packed)[kPacked], int m_base) {
    const TransposedMatrixWriter writer(st, m_base);
#pragma unroll
    for (int j = 0; j < kTileN / 8; j += 2) writer.put(j, packed[2 * j], packed[2 * j + 1], packed[2 * j + 2], packed[2 * j + 3]);
  }

  // (Marking these stores evict-first in the L2 cut dX̃'s DRAM reads at n=1024 from 5.9 to 5.2 GB
  // and moved no role by more than noise, H200, 2026-11-29: not done.)
  // Stores the staged tile into the [num_rows, num_cols] tensor: slab s goes to rows first_row +
  // kTileM * (s / kSlabCols) and 64-column block first_col_block + s % kSlabCols (kSlabCols =
  // kSlabs for the tile as written by write(), kSlabColsT for write_transposed()); a slab that
  // starts past num_cols is skipped, and TMA clips a box at the tensor's edges.
  template <int kSlabCols>
  __device__ static void commit(Tma const& tma, Staging const& st, int first_row, int first_col_block, int num_rows,
                                int num_cols, int consumer_thread) {
    using namespace cute;
    static_assert(kSlabs % kSlabCols == 0, "whole rows of slabs");
    // Generic-proxy smem writes, then the async-proxy (TMA) read: fence, then gather the CTA.
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, 0);
    if (consumer_thread == 0) {
      Tensor mD = tma.get_tma_tensor(make_shape(num_rows, num_cols));
      // Expert tiles start at any row: shift the coordinate origin to the tile's first row.
      Tensor gD = local_tile(domain_offset(make_coord(first_row, 0), mD), SlabShape{}, make_coord(_, _));  // (BM,64,r,c)
#pragma unroll
      for (int s = 0; s < kSlabs; ++s) {
        const int c = first_col_block + s % kSlabCols;
        if (c * 64 >= num_cols) continue;
        Tensor sD = make_tensor(make_smem_ptr(slab(st.lent_a, st.lent_b, st.own, s, kSlabElements)), SlabLayout{});
        auto [tDgD, tDsD] = tma_partition(tma, Int<0>{}, Layout<_1>{}, group_modes<0, 2>(sD),
                                          group_modes<0, 2>(gD(_, _, s / kSlabCols, c)));
        copy(tma, tDsD, tDgD);
      }
      tma_store_arrive();
    }
  }
  // The tile as written by write(): kSlabs slabs side by side from n-block n_block.
  __device__ static void commit(Tma const& tma, Staging const& st, int first_row, int n_block, int num_rows,
                                int n_total, int consumer_thread) {
    commit<kSlabs>(tma, st, first_row, n_block * kSlabs, num_rows, n_total, consumer_thread);
  }

  // Stores the first `rows` (1 .. kTileM - 1) rows of the tile as written by write() to rows
  // first_row .. of the [num_rows, n_total] tensor, largest box first, so every box starts at a
  // multiple of its height (see RowBoxTmas).
  __device__ static void commit_rows(RowBoxTmas const& boxes, Staging const& st, int first_row, int n_block, int rows,
                                     int n_total, int consumer_thread) {
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, 0);
    if (consumer_thread == 0) {
#pragma unroll
      for (int s = 0; s < kSlabs; ++s) {
        const int col = (n_block * kSlabs + s) * 64;
        if (col >= n_total) continue;
        const Element* staged = slab(st.lent_a, st.lent_b, st.own, s, kSlabElements);
        int row = 0;
#pragma unroll
        for (int b = 0; b < kRowBoxes; ++b) {
          const int height = kTileM / 2 >> b;
          if (rows & height) {
            cute::SM90_TMA_STORE_2D::copy(&boxes.box[b], staged + row * 64, col, first_row + row);
            row += height;
          }
        }
      }
      cute::tma_store_arrive();
    }
  }

  // The CTA may not exit while a bulk store still reads its shared memory.
  __device__ static void finish(int consumer_thread) {
    if (consumer_thread == 0) cute::tma_store_wait<0>();
  }
};

template <class Cfg>
struct EpilogueStoreTma {
  using Store = TmaTileStore<Cfg>;
  using Element = typename Store::Element;
  using SharedStorage = typename Store::SharedStorage;
  static constexpr bool kBorrowsStage = true;  // stages its tile in the last mainloop stage (TmaTileStore)
  static constexpr int kTileM = Cfg::kTileM;
  static constexpr int kTileN = Cfg::kTileN;

  static auto make_tma_d(Element* d, int rows, int n) { return Store::make_tma(d, rows, n); }

  struct Params {
    typename Store::Tma tma_d;              // D [num_rows, N]
    typename Store::RowBoxTmas tail_boxes;  // the same tensor, for tiles cut by the expert's end
    const __nv_bfloat16* bias;              // [E, N] or nullptr
    int num_rows;
  };

  __device__ static void prefetch(Params const& p) { cute::prefetch_tma_descriptor(p.tma_d.get_tma_descriptor()); }
  __device__ static void finish(int consumer_thread) { Store::finish(consumer_thread); }
  SONICMOE_EPILOGUE_BIAS_FROM_PARAMS

  template <int kTileM_, int kTileN_, class Accum, class Coords>
  __device__ static void apply(Params const& p, Accum const& accum, Coords const& coords, WorkTile const& work,
                               int n_total, typename Store::Staging const& ss, int consumer_thread) {
    using namespace cute;
    static_assert(kTileM_ == kTileM && kTileN_ == kTileN);
    static_assert(decltype(size(accum))::value == 2 * Store::kPacked, "m64 x kTileN fragment per thread");
    const int m0 = work.m_block * kTileM;
    const int m_base = get<0>(coords(0));
    Store::begin(consumer_thread);
    uint32_t packed[Store::kPacked];
    Store::pack(accum, packed);
    Store::write(ss, packed, m_base);
    if (m0 + kTileM <= work.rows) {
      Store::commit(p.tma_d, ss, work.row_start + m0, work.n_block, p.num_rows, n_total, consumer_thread);
    } else {  // the expert ends inside this tile
      Store::commit_rows(p.tail_boxes, ss, work.row_start + m0, work.n_block, work.rows - m0, n_total,
                         consumer_thread);
    }
  }
};

}  // namespace sonicmoe::gemm
