// tests/cpp/gpu/test_grouped_gemm.cpp — the sm_90a grouped GEMM roles against a CPU reference
// in double precision: up-projection with the SwiGLU epilogue (H and A checked separately) and
// down-projection, over ragged experts (0, 1, 127, 128, 129 rows and a large one, skewed routing),
// d and n that are not multiples of the tile, with and without bias, outputs poisoned with NaN
// before each launch, repeated launches bitwise identical, CUDA-graph capture. Argument checks
// run on every machine; the GPU cases skip visibly without a Hopper GPU.
//
// Also the input gradient of the up-projection, dX̃ = dH_e · W1_e (W1 read N-major).
//
// Tolerance: the kernel's relative Frobenius error must be < 1e-2 and at most 2x (+1e-4) the
// error of a straightforward bf16 path (fp32 dot products rounded to bf16, A from the rounded H).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "ragged_routing.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {
namespace {

using gpu_testing::DeviceBuffer;
using gpu_testing::relative_frobenius;
using gpu_testing::to_double;

uint64_t seed_for_test() {
  static const uint64_t seed = [] {
    if (const char* env = std::getenv("SONICMOE_TEST_SEED")) return uint64_t(std::strtoull(env, nullptr, 10));
    return uint64_t(std::random_device{}()) << 32 | std::random_device{}();
  }();
  return seed;
}

// Grouped routing metadata for given per-expert row counts: rows sorted by expert, inside an
// expert by token; tokens of one expert distinct when the count allows.
struct Routing {
  std::vector<int32_t> offsets;  // [E+1]
  std::vector<int32_t> gather;   // [TK]
  std::vector<int32_t> expert_of_row;
};

Routing make_routing(const std::vector<int>& counts, int64_t num_tokens, std::mt19937_64& rng) {
  Routing r;
  r.offsets.push_back(0);
  std::vector<int32_t> tokens(num_tokens);
  std::iota(tokens.begin(), tokens.end(), 0);
  for (size_t e = 0; e < counts.size(); ++e) {
    std::vector<int32_t> chosen;
    if (counts[e] <= num_tokens) {
      std::shuffle(tokens.begin(), tokens.end(), rng);
      chosen.assign(tokens.begin(), tokens.begin() + counts[e]);
    } else {
      std::uniform_int_distribution<int32_t> dist(0, int32_t(num_tokens - 1));
      for (int i = 0; i < counts[e]; ++i) chosen.push_back(dist(rng));
    }
    std::sort(chosen.begin(), chosen.end());
    for (int32_t t : chosen) {
      r.gather.push_back(t);
      r.expert_of_row.push_back(int32_t(e));
    }
    r.offsets.push_back(int32_t(r.gather.size()));
  }
  return r;
}

struct Errors {
  double kernel = 0, naive = 0;
};

void expect_close(const char* what, const Errors& err) {
  std::printf("  %-4s rel. Frobenius error: kernel %.3e, straightforward bf16 %.3e\n", what, err.kernel, err.naive);
  EXPECT_LT(err.kernel, 1e-2) << what;  // false for NaN: unwritten (poisoned) elements fail here
  EXPECT_LE(err.kernel, 2 * err.naive + 1e-4) << what;
}

struct UpProjCase {
  const char* name;
  std::vector<int> counts;
  int64_t num_tokens, hidden, intermediate;
  bool bias;
};

void run_up_proj(const UpProjCase& c) {
  std::mt19937_64 rng(seed_for_test());
  const int64_t E = int64_t(c.counts.size()), T = c.num_tokens, d = c.hidden, n = c.intermediate;
  const Routing routing = make_routing(c.counts, T, rng);
  const int64_t TK = int64_t(routing.gather.size());
  const auto x = gpu_testing::random_bf16(T * d, 1.0, rng);
  const auto w1 = gpu_testing::random_bf16(E * 2 * n * d, 1.0 / std::sqrt(double(d)), rng);
  const auto b1 = gpu_testing::random_bf16(E * 2 * n, 0.5, rng);

  DeviceBuffer<bfloat16> dx(x), dw1(w1), db1(b1), dh(TK * 2 * n), da(TK * n);
  DeviceBuffer<int32_t> doffsets(routing.offsets), dgather(routing.gather);
  ASSERT_TRUE(dx.ok() && dw1.ok() && db1.ok() && dh.ok() && da.ok() && doffsets.ok() && dgather.ok());
  const UpProjParams params{.x = dx.get(),
                            .w1 = dw1.get(),
                            .b1 = c.bias ? db1.get() : nullptr,
                            .expert_offsets = doffsets.get(),
                            .gather_idx = dgather.get(),
                            .h = dh.get(),
                            .a = da.get(),
                            .num_tokens = T,
                            .num_rows = TK,
                            .hidden = d,
                            .intermediate = n,
                            .num_experts = E};
  std::vector<bfloat16> h_runs[2], a_runs[2];
  for (int run = 0; run < 2; ++run) {
    dh.poison();
    da.poison();
    SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj(params, nullptr));
    SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
    h_runs[run] = dh.download();
    a_runs[run] = da.download();
  }

  // Reference in double; the straightforward bf16 path accumulates in fp32, rounds H to bf16 and
  // computes A from the rounded H.
  std::vector<double> h_ref(TK * 2 * n), a_ref(TK * n), h_naive(TK * 2 * n), a_naive(TK * n);
  const auto xd = to_double(x), wd = to_double(w1), bd = to_double(b1);
  for (int64_t r = 0; r < TK; ++r) {
    const int64_t e = routing.expert_of_row[r], t = routing.gather[r];
    const double* xr = &xd[t * d];
    for (int64_t j = 0; j < 2 * n; ++j) {
      const double* wr = &wd[(e * 2 * n + j) * d];
      double s = 0;
      float sf = 0;
      for (int64_t k = 0; k < d; ++k) {
        s += xr[k] * wr[k];
        sf += float(xr[k]) * float(wr[k]);
      }
      if (c.bias) {
        s += bd[e * 2 * n + j];
        sf += float(bd[e * 2 * n + j]);
      }
      h_ref[r * 2 * n + j] = s;
      h_naive[r * 2 * n + j] = double(float(bfloat16(sf)));
    }
    for (int64_t j = 0; j < n; ++j) {
      const double g = h_ref[r * 2 * n + 2 * j], u = h_ref[r * 2 * n + 2 * j + 1];
      a_ref[r * n + j] = g / (1 + std::exp(-g)) * u;
      const float gn = float(h_naive[r * 2 * n + 2 * j]), un = float(h_naive[r * 2 * n + 2 * j + 1]);
      a_naive[r * n + j] = double(float(bfloat16(gn / (1 + std::exp(-gn)) * un)));
    }
  }
  std::printf("[%s] TK=%lld d=%lld n=%lld E=%lld bias=%d seed=%llu\n", c.name, (long long)TK, (long long)d,
              (long long)n, (long long)E, int(c.bias), (unsigned long long)seed_for_test());
  expect_close("H", {relative_frobenius(to_double(h_runs[0]), h_ref), relative_frobenius(h_naive, h_ref)});
  expect_close("A", {relative_frobenius(to_double(a_runs[0]), a_ref), relative_frobenius(a_naive, a_ref)});
  EXPECT_TRUE(gpu_testing::bitwise_equal(h_runs[0], h_runs[1])) << "H differs between two identical launches";
  EXPECT_TRUE(gpu_testing::bitwise_equal(a_runs[0], a_runs[1])) << "A differs between two identical launches";
}

// Rows [offsets[e], offsets[e+1]) of a row-major matrix with `width` columns: filled with NaN
// (inputs), or zeroed before a comparison (the expert's own results are NaN by construction).
// Down-proj and dX̃ may read their contiguous A rows in whole 128-row boxes: a tile of expert
// e - 1 that ends inside its box then reads expert e's rows too. NaN there must leave every other
// expert's result intact (it would not if anything mixed rows: a wrong box origin, a reduction
// across rows). What the test cannot see: a store of those rows by the wrong tile lands in expert
// e's own rows, which it leaves out; that the epilogues store only rows inside the tile's expert
// is checked numerically by the EdgeExpertSizes tests (wrong weights give wrong values).
template <class T>
void fill_expert_rows(std::vector<T>& m, const std::vector<int32_t>& offsets, int e, int64_t width, T value) {
  if (e < 0) return;
  std::fill(m.begin() + offsets[e] * width, m.begin() + offsets[e + 1] * width, value);
}

struct DownProjCase {
  const char* name;
  std::vector<int> counts;
  int64_t hidden, intermediate;
  bool bias;
  int nan_expert = -1;  // this expert's A rows are NaN (its own outputs are left out of the check)
};

void run_down_proj(const DownProjCase& c) {
  std::mt19937_64 rng(seed_for_test() + 1);
  const int64_t E = int64_t(c.counts.size()), d = c.hidden, n = c.intermediate;
  std::vector<int32_t> offsets{0}, expert_of_row;
  for (int64_t e = 0; e < E; ++e) {
    offsets.push_back(offsets.back() + c.counts[e]);
    for (int i = 0; i < c.counts[e]; ++i) expert_of_row.push_back(int32_t(e));
  }
  const int64_t TK = offsets.back();
  auto a = gpu_testing::random_bf16(TK * n, 1.0, rng);
  fill_expert_rows(a, offsets, c.nan_expert, n, bfloat16(std::numeric_limits<float>::quiet_NaN()));
  const auto w2 = gpu_testing::random_bf16(E * d * n, 1.0 / std::sqrt(double(n)), rng);
  const auto b2 = gpu_testing::random_bf16(E * d, 0.5, rng);

  DeviceBuffer<bfloat16> da(a), dw2(w2), db2(b2), dy(TK * d);
  DeviceBuffer<int32_t> doffsets(offsets);
  ASSERT_TRUE(da.ok() && dw2.ok() && db2.ok() && dy.ok() && doffsets.ok());
  const DownProjParams params{.a = da.get(),
                              .w2 = dw2.get(),
                              .b2 = c.bias ? db2.get() : nullptr,
                              .expert_offsets = doffsets.get(),
                              .y = dy.get(),
                              .num_rows = TK,
                              .hidden = d,
                              .intermediate = n,
                              .num_experts = E};
  std::vector<bfloat16> y_runs[2];
  for (int run = 0; run < 2; ++run) {
    dy.poison();
    SONICMOE_ASSERT_OK_GPU(grouped_gemm_down_proj(params, nullptr));
    SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
    y_runs[run] = dy.download();
  }
  std::vector<double> y_ref(TK * d), y_naive(TK * d);
  const auto ad = to_double(a), wd = to_double(w2), bd = to_double(b2);
  for (int64_t r = 0; r < TK; ++r) {
    const int64_t e = expert_of_row[r];
    for (int64_t j = 0; j < d; ++j) {
      const double* wr = &wd[(e * d + j) * n];
      double s = 0;
      float sf = 0;
      for (int64_t k = 0; k < n; ++k) {
        s += ad[r * n + k] * wr[k];
        sf += float(ad[r * n + k]) * float(wr[k]);
      }
      if (c.bias) {
        s += bd[e * d + j];
        sf += float(bd[e * d + j]);
      }
      y_ref[r * d + j] = s;
      y_naive[r * d + j] = double(float(bfloat16(sf)));
    }
  }
  std::printf("[%s] TK=%lld d=%lld n=%lld E=%lld bias=%d\n", c.name, (long long)TK, (long long)d, (long long)n,
              (long long)E, int(c.bias));
  auto y_got = to_double(y_runs[0]);
  for (auto* m : {&y_got, &y_ref, &y_naive}) fill_expert_rows(*m, offsets, c.nan_expert, d, 0.0);
  expect_close("Y", {relative_frobenius(y_got, y_ref), relative_frobenius(y_naive, y_ref)});
  EXPECT_TRUE(gpu_testing::bitwise_equal(y_runs[0], y_runs[1])) << "Y differs between two identical launches";
}

struct InputGradCase {
  const char* name;
  std::vector<int> counts;
  int64_t hidden, intermediate;
  int nan_expert = -1;  // this expert's dH rows are NaN (its own outputs are left out of the check)
};

// dX̃ = dH_e · W1_e with W1 [E, 2n, d] read untransposed (N-major B operand).
void run_up_proj_input_grad(const InputGradCase& c) {
  std::mt19937_64 rng(seed_for_test() + 2);
  const int64_t E = int64_t(c.counts.size()), d = c.hidden, n = c.intermediate;
  std::vector<int32_t> offsets{0}, expert_of_row;
  for (int64_t e = 0; e < E; ++e) {
    offsets.push_back(offsets.back() + c.counts[e]);
    for (int i = 0; i < c.counts[e]; ++i) expert_of_row.push_back(int32_t(e));
  }
  const int64_t TK = offsets.back();
  auto dh = gpu_testing::random_bf16(TK * 2 * n, 1.0, rng);
  fill_expert_rows(dh, offsets, c.nan_expert, 2 * n, bfloat16(std::numeric_limits<float>::quiet_NaN()));
  const auto w1 = gpu_testing::random_bf16(E * 2 * n * d, 1.0 / std::sqrt(double(2 * n)), rng);
  DeviceBuffer<bfloat16> ddh(dh), dw1(w1), ddx(TK * d);
  DeviceBuffer<int32_t> doffsets(offsets);
  ASSERT_TRUE(ddh.ok() && dw1.ok() && ddx.ok() && doffsets.ok());
  const UpProjInputGradParams params{.dh = ddh.get(),
                                     .w1 = dw1.get(),
                                     .expert_offsets = doffsets.get(),
                                     .dx_rows = ddx.get(),
                                     .num_rows = TK,
                                     .hidden = d,
                                     .intermediate = n,
                                     .num_experts = E};
  std::vector<bfloat16> runs[2];
  for (int run = 0; run < 2; ++run) {
    ddx.poison();
    SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj_input_grad(params, nullptr));
    SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
    runs[run] = ddx.download();
  }
  std::vector<double> ref(TK * d, 0.0), naive(TK * d);
  std::vector<float> acc(d);
  const auto dhd = to_double(dh), wd = to_double(w1);
  for (int64_t r = 0; r < TK; ++r) {
    const int64_t e = expert_of_row[r];
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t k = 0; k < 2 * n; ++k) {
      const double g = dhd[r * 2 * n + k];
      const double* wr = &wd[(e * 2 * n + k) * d];
      for (int64_t j = 0; j < d; ++j) {
        ref[r * d + j] += g * wr[j];
        acc[j] += float(g) * float(wr[j]);
      }
    }
    for (int64_t j = 0; j < d; ++j) naive[r * d + j] = double(float(bfloat16(acc[j])));
  }
  std::printf("[%s] TK=%lld d=%lld n=%lld E=%lld\n", c.name, (long long)TK, (long long)d, (long long)n, (long long)E);
  auto got = to_double(runs[0]);
  for (auto* m : {&got, &ref, &naive}) fill_expert_rows(*m, offsets, c.nan_expert, d, 0.0);
  expect_close("dX~", {relative_frobenius(got, ref), relative_frobenius(naive, ref)});
  EXPECT_TRUE(gpu_testing::bitwise_equal(runs[0], runs[1])) << "dX~ differs between two identical launches";
}

// Expert sizes around the 128-row tile, empty experts first, last and in the middle.
const std::vector<int> kEdgeCounts = {0, 1, 127, 128, 129, 700, 3, 0};

// Half of all rows on one expert, the rest spread (some experts empty).
std::vector<int> skewed_counts(int experts, int total, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int> counts(experts, 0);
  counts[experts / 3] = total / 2;
  std::uniform_int_distribution<int> pick(0, experts - 1);
  for (int i = 0; i < total - total / 2; ++i) {
    int e = pick(rng);
    if (e % 5 == 4) e = experts / 3;  // keep every fifth expert empty
    ++counts[e];
  }
  return counts;
}

// Far more tiles than SMs, so every CTA runs several tiles: the pipeline's stage and phase carry
// over tile boundaries, the scheduler resumes its expert walk, and the TMA-store epilogue reuses
// its buffer. Counts include zeros and exact multiples of the 128-row tile.
std::vector<int> many_tile_counts(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(0, 1000);
  std::vector<int> counts(40);
  for (int e = 0; e < 40; ++e) counts[e] = e % 7 == 3 ? 0 : e % 5 == 1 ? 128 * (1 + e % 4) : dist(rng);
  return counts;
}

TEST(GroupedGemmUpProj, EdgeExpertSizesTailsNoBias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj({"up edge d=200 n=72", kEdgeCounts, 1024, 200, 72, false});
}

TEST(GroupedGemmUpProj, EdgeExpertSizesTailsBias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj({"up edge bias d=200 n=72", kEdgeCounts, 1024, 200, 72, true});
}

TEST(GroupedGemmUpProj, SkewedSeveralTilesBias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  // 2n = 528: three 256-wide N tiles, the last partial; d = 520: nine k-tiles, the last partial.
  run_up_proj({"up skewed d=520 n=264", skewed_counts(16, 2000, seed_for_test()), 700, 520, 264, true});
}

TEST(GroupedGemmUpProj, SingleTokenSingleRow) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj({"up T=1", {0, 0, 1}, 1, 64, 8, false});
}

TEST(GroupedGemmUpProj, ManyTilesPerCta) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj({"up many tiles d=136 n=136", many_tile_counts(seed_for_test() + 5), 4096, 136, 136, true});
}

TEST(GroupedGemmDownProj, EdgeExpertSizesTailsNoBias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_down_proj({"down edge d=200 n=72", kEdgeCounts, 200, 72, false});
}

TEST(GroupedGemmDownProj, EdgeExpertSizesTailsBias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_down_proj({"down edge bias d=200 n=72", kEdgeCounts, 200, 72, true});
}

TEST(GroupedGemmDownProj, SkewedSeveralTilesBias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  // d = 648: three N tiles, the last partial; n = 264: five k-tiles, the last partial.
  run_down_proj({"down skewed d=648 n=264", skewed_counts(16, 2000, seed_for_test() + 7), 648, 264, true});
}

// Expert 1 (1 row) and expert 2 (127 rows) end inside their 128-row boxes, which then read
// expert 2's and expert 3's rows: NaN there must not reach expert 1's or 2's stored rows.
TEST(GroupedGemmDownProj, NeighbourExpertNaNStaysOut) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_down_proj({"down NaN in expert 2", kEdgeCounts, 200, 72, true, /*nan_expert=*/2});
  run_down_proj({"down NaN in expert 3", kEdgeCounts, 200, 72, true, /*nan_expert=*/3});
}

TEST(GroupedGemmUpProjInputGrad, NeighbourExpertNaNStaysOut) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj_input_grad({"dx NaN in expert 2", kEdgeCounts, 200, 72, /*nan_expert=*/2});
  run_up_proj_input_grad({"dx NaN in expert 3", kEdgeCounts, 200, 72, /*nan_expert=*/3});
}

TEST(GroupedGemmUpProjInputGrad, EdgeExpertSizesTails) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  // d = 200: one partial N tile (N-major TMA boxes partly out of bounds); K = 2n = 144: a partial k-tile.
  run_up_proj_input_grad({"dx edge d=200 n=72", kEdgeCounts, 200, 72});
}

TEST(GroupedGemmUpProjInputGrad, SkewedSeveralTiles) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj_input_grad({"dx skewed d=648 n=264", skewed_counts(16, 2000, seed_for_test() + 11), 648, 264});
}

TEST(GroupedGemmDownProj, ManyTilesPerCta) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_down_proj({"down many tiles d=520 n=136", many_tile_counts(seed_for_test() + 6), 520, 136, true});
}

TEST(GroupedGemmUpProjInputGrad, ManyTilesPerCta) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj_input_grad({"dx many tiles d=264 n=136", many_tile_counts(seed_for_test() + 8), 264, 136});
}

// Tails of every length (gpu_testing::every_tail_counts): the row-box TMA stores of the tiles cut
// by their expert's end (down-proj, dX̃; up-proj's H falls back to register stores there).
TEST(GroupedGemmUpProj, EveryTailLength) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj({"up every tail d=200 n=136", gpu_testing::every_tail_counts(seed_for_test() + 21), 512, 200, 136, true});
}

TEST(GroupedGemmDownProj, EveryTailLength) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_down_proj({"down every tail d=328 n=72", gpu_testing::every_tail_counts(seed_for_test() + 22), 328, 72, true});
}

TEST(GroupedGemmUpProjInputGrad, EveryTailLength) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj_input_grad({"dx every tail d=328 n=72", gpu_testing::every_tail_counts(seed_for_test() + 23), 328, 72});
}

// The TMA-store epilogues stage a tile in the shared memory of its last k-tile's stage and give
// that stage back during the next tile's k-loop (after its second k-tile, or at its end when it
// has fewer): short k-loops of one and two k-tiles, with many tiles per CTA.
TEST(GroupedGemmDownProj, ManyTilesPerCtaShortK) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_down_proj({"down many tiles d=520 n=56", many_tile_counts(seed_for_test() + 12), 520, 56, true});
  run_down_proj({"down many tiles d=264 n=120", many_tile_counts(seed_for_test() + 13), 264, 120, false});
}

TEST(GroupedGemmUpProj, ManyTilesPerCtaShortK) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj({"up many tiles d=64 n=136", many_tile_counts(seed_for_test() + 14), 4096, 64, 136, true});
  run_up_proj({"up many tiles d=128 n=264", many_tile_counts(seed_for_test() + 15), 4096, 128, 264, false});
}

TEST(GroupedGemmUpProjInputGrad, ManyTilesPerCtaShortK) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  run_up_proj_input_grad({"dx many tiles d=264 n=32", many_tile_counts(seed_for_test() + 16), 264, 32});
}

// A launch records into a CUDA graph (no host synchronisation inside) and replays correctly.
TEST(GroupedGemmUpProj, CapturesIntoCudaGraph) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  std::mt19937_64 rng(seed_for_test() + 3);
  const int64_t T = 300, d = 128, n = 64;
  const Routing routing = make_routing({5, 0, 250, 130}, T, rng);
  const int64_t E = 4, TK = int64_t(routing.gather.size());
  const auto x = gpu_testing::random_bf16(T * d, 1.0, rng);
  const auto w1 = gpu_testing::random_bf16(E * 2 * n * d, 1.0 / std::sqrt(double(d)), rng);
  DeviceBuffer<bfloat16> dx(x), dw1(w1), dh(TK * 2 * n), da(TK * n), dh2(TK * 2 * n), da2(TK * n);
  DeviceBuffer<int32_t> doffsets(routing.offsets), dgather(routing.gather);
  UpProjParams params{.x = dx.get(), .w1 = dw1.get(), .expert_offsets = doffsets.get(),
                      .gather_idx = dgather.get(), .h = dh.get(), .a = da.get(), .num_tokens = T,
                      .num_rows = TK, .hidden = d, .intermediate = n, .num_experts = E};
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj(params, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  cudaStream_t stream;
  SONICMOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  params.h = dh2.get();
  params.a = da2.get();
  dh2.poison();
  da2.poison();
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  SONICMOE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const Status status = grouped_gemm_up_proj(params, stream);
  SONICMOE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  ASSERT_TRUE(status.ok()) << status.message();
  SONICMOE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  SONICMOE_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  SONICMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_TRUE(gpu_testing::bitwise_equal(dh.download(), dh2.download()));
  EXPECT_TRUE(gpu_testing::bitwise_equal(da.download(), da2.download()));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// ---- argument checks: host only, no GPU needed ------------------------------------------------

alignas(16) bfloat16 g_fake_bf16[64];
alignas(16) int32_t g_fake_i32[64];

UpProjParams valid_up_params() {
  return UpProjParams{.x = g_fake_bf16, .w1 = g_fake_bf16, .expert_offsets = g_fake_i32,
                      .gather_idx = g_fake_i32, .h = g_fake_bf16, .a = g_fake_bf16, .num_tokens = 16,
                      .num_rows = 32, .hidden = 200, .intermediate = 72, .num_experts = 8};
}

DownProjParams valid_down_params() {
  return DownProjParams{.a = g_fake_bf16, .w2 = g_fake_bf16, .expert_offsets = g_fake_i32, .y = g_fake_bf16,
                        .num_rows = 32, .hidden = 200, .intermediate = 72, .num_experts = 8};
}

template <class Params, class Mutate>
void expect_rejected(Params params, Mutate mutate, const char* argument) {
  mutate(params);
  const Status status = validate(params);
  EXPECT_EQ(status.code(), StatusCode::invalid_argument) << argument;
  EXPECT_EQ(status.argument(), argument) << status.message();
  EXPECT_FALSE(status.rule().empty());
}

TEST(GroupedGemmValidation, UpProjAcceptsValidArguments) { EXPECT_TRUE(validate(valid_up_params()).ok()); }

TEST(GroupedGemmValidation, UpProjRejectsBadArguments) {
  const auto p = valid_up_params();
  expect_rejected(p, [](auto& q) { q.x = nullptr; }, "x");
  expect_rejected(p, [](auto& q) { q.x = g_fake_bf16 + 1; }, "x");  // 2-byte offset: not 16-byte aligned
  expect_rejected(p, [](auto& q) { q.w1 = nullptr; }, "w1");
  expect_rejected(p, [](auto& q) { q.b1 = g_fake_bf16 + 1; }, "b1");
  expect_rejected(p, [](auto& q) { q.expert_offsets = nullptr; }, "expert_offsets");
  expect_rejected(p, [](auto& q) { q.gather_idx = nullptr; }, "gather_idx");
  expect_rejected(p, [](auto& q) { q.h = nullptr; }, "h");
  expect_rejected(p, [](auto& q) { q.a = g_fake_bf16 + 4; }, "a");
  expect_rejected(p, [](auto& q) { q.hidden = 12; }, "hidden");
  expect_rejected(p, [](auto& q) { q.hidden = 0; }, "hidden");
  expect_rejected(p, [](auto& q) { q.intermediate = 70; }, "intermediate");
  expect_rejected(p, [](auto& q) { q.intermediate = -8; }, "intermediate");
  expect_rejected(p, [](auto& q) { q.num_experts = 0; }, "num_experts");
  expect_rejected(p, [](auto& q) { q.num_rows = -1; }, "num_rows");
  expect_rejected(p, [](auto& q) { q.num_rows = int64_t(1) << 40; }, "num_rows");
  expect_rejected(p, [](auto& q) { q.num_tokens = 0; }, "num_tokens");
  // The launch function runs the same checks before any CUDA call.
  auto bad = p;
  bad.hidden = 9;
  const Status status = grouped_gemm_up_proj(bad, nullptr);
  EXPECT_EQ(status.code(), StatusCode::invalid_argument);
  EXPECT_EQ(status.argument(), "hidden");
}

TEST(GroupedGemmValidation, UpProjInputGradRejectsBadArguments) {
  const UpProjInputGradParams p{.dh = g_fake_bf16, .w1 = g_fake_bf16, .expert_offsets = g_fake_i32,
                                .dx_rows = g_fake_bf16, .num_rows = 32, .hidden = 200, .intermediate = 72,
                                .num_experts = 8};
  EXPECT_TRUE(validate(p).ok());
  expect_rejected(p, [](auto& q) { q.dh = nullptr; }, "dh");
  expect_rejected(p, [](auto& q) { q.w1 = g_fake_bf16 + 3; }, "w1");
  expect_rejected(p, [](auto& q) { q.expert_offsets = nullptr; }, "expert_offsets");
  expect_rejected(p, [](auto& q) { q.dx_rows = g_fake_bf16 + 1; }, "dx_rows");
  expect_rejected(p, [](auto& q) { q.hidden = 7; }, "hidden");
  expect_rejected(p, [](auto& q) { q.intermediate = 4; }, "intermediate");
  expect_rejected(p, [](auto& q) { q.num_experts = 0; }, "num_experts");
  expect_rejected(p, [](auto& q) { q.num_rows = -1; }, "num_rows");
  EXPECT_EQ(grouped_gemm_up_proj_input_grad(UpProjInputGradParams{}, nullptr).code(), StatusCode::invalid_argument);
}

TEST(GroupedGemmValidation, DownProjRejectsBadArguments) {
  const auto p = valid_down_params();
  EXPECT_TRUE(validate(p).ok());
  expect_rejected(p, [](auto& q) { q.a = nullptr; }, "a");
  expect_rejected(p, [](auto& q) { q.a = g_fake_bf16 + 2; }, "a");
  expect_rejected(p, [](auto& q) { q.w2 = g_fake_bf16 + 1; }, "w2");
  expect_rejected(p, [](auto& q) { q.b2 = g_fake_bf16 + 1; }, "b2");
  expect_rejected(p, [](auto& q) { q.expert_offsets = nullptr; }, "expert_offsets");
  expect_rejected(p, [](auto& q) { q.y = nullptr; }, "y");
  expect_rejected(p, [](auto& q) { q.hidden = 100; }, "hidden");
  expect_rejected(p, [](auto& q) { q.intermediate = 0; }, "intermediate");
  expect_rejected(p, [](auto& q) { q.num_experts = -3; }, "num_experts");
  expect_rejected(p, [](auto& q) { q.num_rows = -5; }, "num_rows");
  const Status status = grouped_gemm_down_proj(DownProjParams{}, nullptr);
  EXPECT_EQ(status.code(), StatusCode::invalid_argument);
}

}  // namespace
}  // namespace sonicmoe
