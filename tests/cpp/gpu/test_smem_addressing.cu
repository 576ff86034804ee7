// The hand-written shared-memory address arithmetic of the GEMM skeleton against CuTe's layouts,
// on the host (no GPU needed: runs in CI). The producers and the TMA-store epilogue form their
// swizzled addresses with immediates and XORs instead of going through the CuTe tensors (each
// measured faster, see the comments at the helpers); wgmma and TMA read those tiles through the
// CuTe layouts, so the two must agree byte for byte. Here every producer thread, pass and stage
// (and every epilogue thread's fragment) of the tile configurations the roles use is compared
// with the address CuTe gives for the same coordinate — a mismatch would otherwise show up only
// as wrong GEMM results on a Hopper GPU. Likewise the accumulator fragment layout the epilogues
// index by hand.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "gemm/epilogue_store.cuh"
#include "gemm/epilogue_swiglu.cuh"
#include "gemm/epilogue_weight_grad.cuh"
#include "gemm/mainloop_sm90_cpasync_varlen_k.cuh"
#include "gemm/mainloop_sm90_tma_gather.cuh"
#include "gemm/tile_config.h"

namespace sonicmoe::gemm {
namespace {

// Byte offset of coordinate `coord` in a tensor with `layout` placed at a 1024-byte-aligned host
// buffer: the same pointer arithmetic (swizzle applied to the address) as the kernels' `&s(...)`.
template <class Layout>
struct Placed {
  using Element = cutlass::bfloat16_t;
  std::vector<Element> storage = std::vector<Element>(cute::cosize_v<Layout> + 1024);
  Element* base = reinterpret_cast<Element*>((reinterpret_cast<uintptr_t>(storage.data()) + 1023) & ~uintptr_t(1023));
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<Element*>(nullptr)), Layout{})) tensor =
      cute::make_tensor(cute::make_smem_ptr(base), Layout{});

  template <class... Coord>
  uint32_t offset(Coord... coord) const {
    return uint32_t(reinterpret_cast<uintptr_t>(&tensor(coord...)) - reinterpret_cast<uintptr_t>(base));
  }
};

// Varlen-M producer (up-proj, down-proj, dH, dX̃): thread t copies A row row0 + p*kRowsPerPass,
// chunk t % kChunksPerRow, at its pass-0 address plus pass_offset_a(p), stage s at
// s * kStageBytesA.
template <class Cfg, cute::GMMA::Major kMajorB>
void check_gather_m_producer() {
  using Mainloop = MainloopSm90TmaGather<Cfg, kMajorB>;
  Placed<typename Mainloop::SmemLayoutA> a;
  int checked = 0;
  for (int t = 0; t < Mainloop::kProducerThreads; ++t) {
    const int chunk = t % Cfg::kChunksPerRow, row0 = t / Cfg::kChunksPerRow;
    const uint32_t pass0 = a.offset(row0, chunk * 8, 0);
    for (int s = 0; s < Cfg::kStages; ++s)
      for (int p = 0; p < Cfg::kPasses; ++p) {
        const uint32_t want = a.offset(row0 + p * Cfg::kRowsPerPass, chunk * 8, s);
        const uint32_t got = pass0 + uint32_t(s) * Mainloop::kStageBytesA + Mainloop::pass_offset_a(p);
        ASSERT_EQ(got, want) << "thread " << t << " pass " << p << " stage " << s;
        ++checked;
      }
  }
  EXPECT_EQ(checked, Mainloop::kProducerThreads * Cfg::kStages * Cfg::kPasses);
}

TEST(SmemAddressing, GatherMProducerMatchesCuteLayout) {
  check_gather_m_producer<UpProjTile, cute::GMMA::Major::K>();
  check_gather_m_producer<DownProjTile, cute::GMMA::Major::K>();
  check_gather_m_producer<UpProjInputGradTile, cute::GMMA::Major::MN>();
  check_gather_m_producer<DownProjActGradTilePingPong, cute::GMMA::Major::MN>();
  check_gather_m_producer<DownProjActGradTileCooperative, cute::GMMA::Major::MN>();
}

// Varlen-K producer (dW1, dW2): lane (warp w, chunk c, lane group g) copies row
// 16w + warp_row(p, lane) of the k-tile, column 8c, at pass_address(its pass-0 address, p).
template <class Mainloop, int kWidth, class SmemLayout>
void check_gather_k_copy() {
  using Copy = typename Mainloop::template RowCopy<kWidth>;
  Placed<SmemLayout> s;
  for (int t = 0; t < Mainloop::kProducerThreads; ++t) {
    const int lane = t % 32, warp = t / 32, c = lane % Copy::kChunks;
    const int block_row = warp * Mainloop::kWarpRows;
    for (int stage = 0; stage < Mainloop::kStages; ++stage) {
      const uint32_t pass0 = s.offset(c * 8, block_row + Copy::warp_row(0, lane), 0) + uint32_t(stage) * Copy::kStageBytes;
      ASSERT_EQ(pass0, s.offset(c * 8, block_row + Copy::warp_row(0, lane), stage)) << "stage " << stage;
      for (int p = 0; p < Copy::kPasses; ++p) {
        const int row = block_row + Copy::warp_row(p, lane);
        ASSERT_LT(row, Mainloop::kTileK);
        ASSERT_EQ(Copy::pass_address(pass0, p), s.offset(c * 8, row, stage))
            << "width " << kWidth << " thread " << t << " pass " << p << " stage " << stage;
      }
    }
  }
  // Every (row, chunk) of a k-tile is copied exactly once.
  std::vector<int> hits(size_t(Mainloop::kTileK * Copy::kChunks), 0);
  for (int t = 0; t < Mainloop::kProducerThreads; ++t)
    for (int p = 0; p < Copy::kPasses; ++p) {
      const int lane = t % 32, row = (t / 32) * Mainloop::kWarpRows + Copy::warp_row(p, lane);
      ++hits[size_t(row * Copy::kChunks + lane % Copy::kChunks)];
    }
  for (int h : hits) ASSERT_EQ(h, 1);
}

TEST(SmemAddressing, GatherKProducerMatchesCuteLayout) {
  using WeightGrad = MainloopSm90CpAsyncVarlenK<WeightGradTile>;  // dW2 and dW1
  check_gather_k_copy<WeightGrad, WeightGrad::kTileM, typename WeightGrad::SmemLayoutA>();  // gathered dO or x
  check_gather_k_copy<WeightGrad, WeightGrad::kTileN, typename WeightGrad::SmemLayoutB>();  // contiguous tail tile
}

// TMA-store epilogue staging through stmatrix.x4 (TmaTileStore::MatrixWriter), emulated: lane L
// of a warp gives the address of row L % 8 of matrix L / 8; register i of lane l (pair (v1, jj)
// = (i % 2, j + i / 2)) lands at that matrix's row l / 4, 4 bytes per lane l % 4 further. Every
// pair of every warp must land where CuTe's layout puts tile element (warp_row0 + 8*v1 + l/4,
// 8*jj + 2*(l%4)), and every 4-byte word of the tile must be written exactly once.
template <class Cfg>
void check_store_staging() {
  using Store = TmaTileStore<Cfg>;
  using Writer = typename Store::MatrixWriter;
  Placed<typename Store::SmemLayout> d;
  std::vector<int> hits(size_t(Cfg::kTileM * Cfg::kTileN / 2), 0);
  for (int warp_row0 = 0; warp_row0 < Cfg::kTileM; warp_row0 += 16)
    for (int j = 0; j < Cfg::kTileN / 8; j += 2)
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          const int v1 = i % 2, jj = j + i / 2;
          const int row_lane = 8 * i + lane / 4;  // the lane whose address is this matrix row
          const uint32_t got = Writer::address(Writer::lane_address(0, warp_row0, row_lane), j) + 4u * uint32_t(lane % 4);
          const int row = warp_row0 + 8 * v1 + lane / 4, col = 8 * jj + 2 * (lane % 4);
          ASSERT_EQ(got, d.offset(row, col)) << "warp row " << warp_row0 << " j " << j << " lane " << lane << " reg " << i;
          ++hits[got / 4];
        }
  for (int h : hits) ASSERT_EQ(h, 1);
}

TEST(SmemAddressing, TmaStoreStagingMatchesCuteLayout) {
  check_store_staging<UpProjTile>();
  check_store_staging<DownProjTile>();
  check_store_staging<UpProjInputGradTile>();
}

// The transposed staging of dW1 (TmaTileStore::TransposedMatrixWriter), emulated: stmatrix.trans
// stores matrix i transposed, so the 16-bit value of lane l at matrix position (row l / 4,
// column 2*(l % 4) + e) lands in stored row 2*(l % 4) + e, whose address lane 8*i + that row
// gives, 2 bytes per matrix row further. Every value must land where the slab layout puts
// element (C column, C row) of the transposed tile, slab (n / kTileM) * kSlabColsT + m / 64, and
// every 16-bit element of the staging must be written exactly once.
template <class Cfg>
void check_transposed_store_staging() {
  using Store = TmaTileStore<Cfg>;
  using Writer = typename Store::TransposedMatrixWriter;
  Placed<typename Store::SlabLayout> slab_layout;
  const uint32_t bytes = Store::kSlabBytes;  // slabs contiguous, in order (lent A, lent B, own)
  const auto slab_at = [&](int s) { return Store::slab(0u, bytes, (1 + Store::kLentBSlabs) * bytes, s, int(bytes)); };
  std::vector<int> hits(size_t(Cfg::kTileM * Cfg::kTileN), 0);
  for (int warp_row0 = 0; warp_row0 < Cfg::kTileM; warp_row0 += 16)
    for (int j = 0; j < Cfg::kTileN / 8; j += 2)
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i)
          for (int e = 0; e < 2; ++e) {
            const int v1 = i % 2, jj = j + i / 2;
            const int stored_row = 2 * (lane % 4) + e;  // of matrix i
            const uint32_t got = slab_at(Writer::slab_index(warp_row0 / 64, j)) +
                                 Writer::slab_offset(Writer::lane_address(warp_row0, 8 * i + stored_row), j) +
                                 2u * uint32_t(lane / 4);
            const int m = warp_row0 + 8 * v1 + lane / 4, n = 8 * jj + 2 * (lane % 4) + e;  // C coordinates
            const int s = (n / Cfg::kTileM) * Store::kSlabColsT + m / 64;
            const uint32_t want = slab_at(s) + slab_layout.offset(n % Cfg::kTileM, m % 64);
            ASSERT_EQ(got, want) << "warp row " << warp_row0 << " j " << j << " lane " << lane << " reg " << i << " half " << e;
            ++hits[got / 2];
          }
  for (int h : hits) ASSERT_EQ(h, 1);
}

TEST(SmemAddressing, TransposedTmaStoreStagingMatchesCuteLayout) { check_transposed_store_staging<WeightGradTile>(); }

// The staging slabs as the kernel places them (TmaTileStore::slab): slab 0 is the lent stage's A
// buffer, the next kLentBSlabs its B buffer, the rest the epilogue's own memory; a stage's
// buffers are whole slabs, and every slab lies inside its buffer, none overlapping another.
template <class Cfg>
void check_staging_slabs() {
  using Store = TmaTileStore<Cfg>;
  static_assert(Cfg::kTileM * Cfg::kTileK == Store::kSlabElements, "a stage's A buffer is one slab");
  static_assert(Cfg::kTileN * Cfg::kTileK == Store::kLentBSlabs * Store::kSlabElements, "B is whole slabs");
  const uint32_t bytes = Store::kSlabBytes;
  const uint32_t a = 1u << 20, b = 2u << 20, own = 3u << 20;  // three separate buffers
  const uint32_t a_end = a + bytes, b_end = b + Store::kLentBSlabs * bytes, own_end = own + Store::kOwnSlabs * bytes;
  std::vector<uint32_t> seen;
  for (int s = 0; s < Store::kSlabs; ++s) {
    const uint32_t at = Store::slab(a, b, own, s, int(bytes));
    const bool in_a = at >= a && at + bytes <= a_end, in_b = at >= b && at + bytes <= b_end,
               in_own = at >= own && at + bytes <= own_end;
    ASSERT_TRUE(s == 0 ? in_a : s <= Store::kLentBSlabs ? in_b : in_own) << "slab " << s;
    ASSERT_EQ(at % bytes, 0u) << "slab " << s;
    for (uint32_t other : seen) ASSERT_NE(at, other) << "slab " << s;
    seen.push_back(at);
  }
}

TEST(SmemAddressing, TmaStoreStagingSlabsInLentStageAndOwnMemory) {
  check_staging_slabs<UpProjTile>();
  check_staging_slabs<DownProjTile>();
  check_staging_slabs<UpProjInputGradTile>();
  check_staging_slabs<WeightGradTile>();
}

// The epilogues index the accumulator fragment by hand: value i of a consumer thread sits at row
// r0 + 8*((i/2) % 2), column c0 + i % 2 + 8*(i/4) of the tile, with (r0 % 16) < 8 and c0 < 8 even
// (TmaTileStore::write, the dSwiGLU epilogue). Checked here against CuTe's partition of the
// tiled MMA, for every consumer thread of the cooperative and the ping-pong tiles.
template <class Cfg, cute::GMMA::Major kMajorB>
void check_fragment_layout() {
  using namespace cute;
  using Mainloop = MainloopSm90TmaGather<Cfg, kMajorB>;
  typename Mainloop::TiledMma tiled_mma;
  for (int t = 0; t < 128 * Cfg::kMmaWarpgroups; ++t) {
    auto thr = tiled_mma.get_thread_slice(t);
    auto coords = thr.partition_C(make_identity_tensor(Shape<Int<Cfg::kTileM>, Int<Cfg::kTileN>>{}));
    ASSERT_EQ(int(size(coords)), Cfg::kTileN / 2) << "m64 x kTileN fragment: kTileN/2 values per thread";
    const int r0 = get<0>(coords(0)), c0 = get<1>(coords(0));
    ASSERT_LT(r0 % 16, 8);
    ASSERT_EQ(c0, 2 * (t % 4)) << "the lanes of a quad hold one row's columns (QuadTranspose)";
    // EpilogueWeightGradTransposed pairs rows through lane ^ 4: the same columns, row ^ 1.
    auto partner = tiled_mma.get_thread_slice(t ^ 4).partition_C(
        make_identity_tensor(Shape<Int<Cfg::kTileM>, Int<Cfg::kTileN>>{}));
    for (int i = 0; i < int(size(coords)); ++i) {
      ASSERT_EQ(int(get<0>(coords(i))), r0 + 8 * ((i / 2) % 2)) << "thread " << t << " value " << i;
      ASSERT_EQ(int(get<1>(coords(i))), c0 + i % 2 + 8 * (i / 4)) << "thread " << t << " value " << i;
      ASSERT_EQ(int(get<0>(partner(i))), int(get<0>(coords(i))) ^ 1) << "thread " << t << " value " << i;
      ASSERT_EQ(int(get<1>(partner(i))), int(get<1>(coords(i)))) << "thread " << t << " value " << i;
    }
  }
}

TEST(SmemAddressing, AccumulatorFragmentLayout) {
  check_fragment_layout<UpProjTile, cute::GMMA::Major::K>();
  check_fragment_layout<WeightGradTile, cute::GMMA::Major::K>();
  check_fragment_layout<DownProjActGradTilePingPong, cute::GMMA::Major::MN>();
  check_fragment_layout<DownProjActGradTileCooperative, cute::GMMA::Major::MN>();
}

// QuadTranspose (the up-proj epilogue's A store) emulated for the 4 lanes of a quad: __byte_perm
// and the two shuffles by hand. Lane p starts with the bf16 values e(p, jj) (A column p + 4 jj of
// a 16-column group) and must end with columns 4q .. 4q+3, i.e. e(0, q), e(1, q), e(2, q), e(3, q).
uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
  const uint64_t bytes = uint64_t(a) | uint64_t(b) << 32;
  uint32_t out = 0;
  for (int i = 0; i < 4; ++i) out |= uint32_t((bytes >> (8 * ((sel >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return out;
}

TEST(SmemAddressing, QuadTransposeGivesEachLaneFourConsecutiveColumns) {
  auto e = [](int lane, int jj) { return uint32_t(0x1000 * (lane + 1) + 0x10 * (jj + 1)); };  // distinct 16-bit
  uint32_t mine[4], sent[4], other[4], keep[4], sent2[4], received[4];
  for (int q = 0; q < 4; ++q) {
    const auto sel = QuadTranspose::selectors(q);
    const uint32_t r0 = e(q, 0) | e(q, 1) << 16, r1 = e(q, 2) | e(q, 3) << 16;
    mine[q] = sel.hi ? r1 : r0;
    sent[q] = sel.hi ? r0 : r1;
  }
  for (int q = 0; q < 4; ++q) other[q] = sent[q ^ 2];
  for (int q = 0; q < 4; ++q) {
    const auto sel = QuadTranspose::selectors(q);
    keep[q] = byte_perm(mine[q], other[q], sel.keep);
    sent2[q] = byte_perm(mine[q], other[q], sel.send);
  }
  for (int q = 0; q < 4; ++q) received[q] = sent2[q ^ 1];
  for (int q = 0; q < 4; ++q) {
    const auto sel = QuadTranspose::selectors(q);
    const uint32_t w0 = byte_perm(keep[q], received[q], sel.w0), w1 = byte_perm(keep[q], received[q], sel.w1);
    EXPECT_EQ(w0, e(0, q) | e(1, q) << 16) << "lane " << q;
    EXPECT_EQ(w1, e(2, q) | e(3, q) << 16) << "lane " << q;
  }
}

}  // namespace
}  // namespace sonicmoe::gemm
