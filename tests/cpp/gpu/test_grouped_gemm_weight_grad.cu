// Weight-gradient GEMM roles (varlen K: dW2 = dOᵀ·A', dW1 = dHᵀ·x) on the GPU against double
// host loops over the same bf16 inputs: ragged experts (0, 1, 127, 128, 129 and a large count),
// skewed routing, sizes that are not multiples of the tile, poisoned outputs, bitwise-repeatable
// results. Argument checks run everywhere (they never touch the GPU). Skips without Hopper.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "gpu/ragged_routing.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe::gpu_testing {
namespace {

// out[e] (m x n) = Σ_rows left[lrow]ᵀ ⊗ right[rrow] in double.
std::vector<double> weight_grad_reference(const Ragged& g, const std::vector<bfloat16>& left, bool left_gathered,
                                          int64_t m, const std::vector<bfloat16>& right, bool right_gathered,
                                          int64_t n) {
  std::vector<double> out(static_cast<size_t>(g.experts() * m * n), 0.0);
  for (int64_t e = 0; e < g.experts(); ++e)
    for (int64_t r = g.offsets[size_t(e)]; r < g.offsets[size_t(e + 1)]; ++r) {
      const int64_t lr = left_gathered ? g.gather[size_t(r)] : r, rr = right_gathered ? g.gather[size_t(r)] : r;
      for (int64_t i = 0; i < m; ++i) {
        const double l = float(left[size_t(lr * m + i)]);
        double* o = out.data() + (e * m + i) * n;
        for (int64_t j = 0; j < n; ++j) o[j] += l * double(float(right[size_t(rr * n + j)]));
      }
    }
  return out;
}

// Error of plain bf16 rounding of the exact result: the floor any bf16 output sits on.
double bf16_rounding_error(const std::vector<double>& ref) {
  std::vector<double> rounded(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) rounded[i] = float(bfloat16(float(ref[i])));
  return relative_frobenius(rounded, ref);
}

void check_down_proj_weight_grad(const std::vector<int>& counts, int64_t tokens, int64_t d, int64_t n) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " d=" << d << " n=" << n);
  std::mt19937_64 rng(seed);
  const Ragged g(counts, tokens, rng);
  const auto dout = random_bf16(size_t(tokens * d), 1.0, rng), a_scaled = random_bf16(size_t(g.rows() * n), 0.5, rng);
  DeviceBuffer<bfloat16> d_dout(dout), d_a(a_scaled), d_out(size_t(g.experts() * d * n));
  DeviceBuffer<int32_t> d_off(g.offsets), d_gather(g.gather);
  const DownProjWeightGradParams p{.grad_out = d_dout.get(), .a_scaled = d_a.get(), .expert_offsets = d_off.get(),
                                   .gather_idx = d_gather.get(), .grad_w2 = d_out.get(), .num_tokens = tokens,
                                   .num_rows = g.rows(), .hidden = d, .intermediate = n,
                                   .num_experts = g.experts()};
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_down_proj_weight_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = d_out.download();
  const auto ref = weight_grad_reference(g, dout, true, d, a_scaled, false, n);
  const double err = relative_frobenius(to_double(got), ref), floor = bf16_rounding_error(ref);
  EXPECT_LT(err, 2 * floor + 1e-4) << "bf16 rounding alone gives " << floor;
  for (int64_t e = 0; e < g.experts(); ++e)
    if (counts[size_t(e)] == 0)
      for (int64_t i = 0; i < d * n; ++i) ASSERT_EQ(float(got[size_t(e * d * n + i)]), 0.f) << "expert " << e;
  d_out.poison();  // a second run gives the same bits
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_down_proj_weight_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(bitwise_equal(d_out.download(), got)) << "not bitwise repeatable";
}

void check_up_proj_weight_grad(const std::vector<int>& counts, int64_t tokens, int64_t d, int64_t h_cols) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " d=" << d << " h_cols=" << h_cols);
  std::mt19937_64 rng(seed);
  const Ragged g(counts, tokens, rng);
  const auto dh = random_bf16(size_t(g.rows() * h_cols), 0.5, rng), x = random_bf16(size_t(tokens * d), 1.0, rng);
  DeviceBuffer<bfloat16> d_dh(dh), d_x(x), d_out(size_t(g.experts() * h_cols * d));
  DeviceBuffer<int32_t> d_off(g.offsets), d_gather(g.gather);
  const UpProjWeightGradParams p{.grad_h = d_dh.get(), .x = d_x.get(), .expert_offsets = d_off.get(),
                                 .gather_idx = d_gather.get(), .grad_w1 = d_out.get(), .num_tokens = tokens,
                                 .num_rows = g.rows(), .hidden = d, .h_cols = h_cols, .num_experts = g.experts()};
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj_weight_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = d_out.download();
  const auto ref = weight_grad_reference(g, dh, false, h_cols, x, true, d);
  const double err = relative_frobenius(to_double(got), ref), floor = bf16_rounding_error(ref);
  EXPECT_LT(err, 2 * floor + 1e-4) << "bf16 rounding alone gives " << floor;
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj_weight_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(bitwise_equal(d_out.download(), got)) << "not bitwise repeatable";
}

// Expert sizes 0, 1, 127, 128, 129 and a large one; d and n not multiples of the tile.
const std::vector<int> kEdgeCounts = {0, 1, 127, 128, 129, 0, 700};

TEST(GroupedGemmDownProjWeightGrad, EdgeExpertSizesAndTails) { check_down_proj_weight_grad(kEdgeCounts, 800, 200, 72); }
TEST(GroupedGemmDownProjWeightGrad, SkewedOneExpertHalfTheRows) {
  check_down_proj_weight_grad({1500, 100, 250, 0, 400, 250, 500}, 2048, 264, 136);
}
TEST(GroupedGemmUpProjWeightGrad, EdgeExpertSizesAndTails) { check_up_proj_weight_grad(kEdgeCounts, 800, 200, 144); }
TEST(GroupedGemmUpProjWeightGrad, SkewedOneExpertHalfTheRows) {
  check_up_proj_weight_grad({1500, 100, 250, 0, 400, 250, 500}, 2048, 136, 520);
}
// More output tiles than CTAs: 300 experts x 2 x 1 tiles (dW2) and 300 x 2 x 1 (dW1), experts of
// 0-129 rows, so that every CTA's persistent loop runs several tiles.
TEST(GroupedGemmDownProjWeightGrad, ManyTilesPerCta) {
  check_down_proj_weight_grad(repeated_counts({1, 0, 3, 64, 129}, 60), 2048, 200, 72);
}
TEST(GroupedGemmUpProjWeightGrad, ManyTilesPerCta) {
  check_up_proj_weight_grad(repeated_counts({1, 0, 3, 64, 129}, 60), 2048, 200, 144);
}
// The same with 2n = 256, so that dW1's tiles lie inside each expert's gradient along 2n and go
// through the TMA store (with 2n = 144 above every dW1 tile falls back to register stores), and
// d = 200 cuts the second column block; the experts without rows (0 k-tiles, no stage to lend)
// and those with 1-3 k-tiles alternate with them in every CTA's loop.
TEST(GroupedGemmUpProjWeightGrad, ManyTilesPerCtaTmaStore) {
  check_up_proj_weight_grad(repeated_counts({1, 0, 3, 64, 129}, 60), 2048, 200, 256);
}
// Reductions of every length mod 64 (gpu_testing::every_tail_counts: experts of 1..127 rows): the
// expert's last, partial k-tile holds every count of rows, zero-filled past them.
TEST(GroupedGemmDownProjWeightGrad, EveryTailLength) {
  check_down_proj_weight_grad(every_tail_counts(fresh_seed()), 1024, 200, 72);
}
TEST(GroupedGemmUpProjWeightGrad, EveryTailLength) {
  check_up_proj_weight_grad(every_tail_counts(fresh_seed()), 1024, 200, 256);
}
TEST(GroupedGemmUpProjWeightGrad, NoRowsAtAll) { check_up_proj_weight_grad({0, 0, 0}, 4, 64, 128); }

TEST(GroupedGemmWeightGradValidation, RejectsBadArguments) {
  alignas(16) static bfloat16 buf[64];
  alignas(16) static int32_t idx[8];
  const DownProjWeightGradParams good{.grad_out = buf, .a_scaled = buf, .expert_offsets = idx, .gather_idx = idx,
                                      .grad_w2 = buf, .num_tokens = 4, .num_rows = 4, .hidden = 8,
                                      .intermediate = 8, .num_experts = 2};
  EXPECT_TRUE(validate(good).ok());
  auto expect_bad = [](DownProjWeightGradParams p, const char* arg) {
    const Status s = validate(p);
    EXPECT_EQ(s.code(), StatusCode::invalid_argument) << arg;
    EXPECT_EQ(s.argument(), arg) << s.message();
  };
  auto p = good;
  p.hidden = 12;
  expect_bad(p, "hidden");
  p = good;
  p.intermediate = 0;
  expect_bad(p, "intermediate");
  p = good;
  p.num_experts = 0;
  expect_bad(p, "num_experts");
  p = good;
  p.gather_idx = nullptr;
  expect_bad(p, "gather_idx");
  p = good;
  p.a_scaled = buf + 1;  // 2-byte aligned only
  expect_bad(p, "a_scaled");
  p = good;
  p.num_rows = -1;
  expect_bad(p, "num_rows");
  p = good;  // the gradient's rows of all experts are one TMA tensor with 32-bit rows
  p.num_experts = 1 << 20;
  p.hidden = 1 << 12;
  expect_bad(p, "hidden");
  const UpProjWeightGradParams up{.grad_h = buf, .x = buf, .expert_offsets = idx, .gather_idx = idx, .grad_w1 = buf,
                                  .num_tokens = 4, .num_rows = 4, .hidden = 8, .h_cols = 20, .num_experts = 2};
  EXPECT_EQ(validate(up).argument(), "h_cols");
  auto many = up;
  many.h_cols = 1 << 12;
  many.num_experts = 1 << 20;
  EXPECT_EQ(validate(many).argument(), "h_cols");
}

}  // namespace
}  // namespace sonicmoe::gpu_testing
