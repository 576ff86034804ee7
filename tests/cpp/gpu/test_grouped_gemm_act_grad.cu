// The dH role (down-projection activation gradient with the dSwiGLU / s·A / partial-dS epilogue)
// on the GPU against double host loops over the same bf16 inputs, per output tensor: ragged and
// skewed experts, n spanning several N tiles, poisoned outputs, bitwise repeatability.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "gpu/ragged_routing.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe::gpu_testing {
namespace {

double bf16_floor(const std::vector<double>& ref) {
  std::vector<double> rounded(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) rounded[i] = float(bfloat16(float(ref[i])));
  return relative_frobenius(rounded, ref);
}

void check_act_grad(const std::vector<int>& counts, int64_t tokens, int64_t d, int64_t n) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " d=" << d << " n=" << n);
  std::mt19937_64 rng(seed);
  const Ragged g(counts, tokens, rng);
  const int64_t TK = g.rows(), E = g.experts(), ds_cols = down_proj_act_grad_partial_cols(n);
  const auto dout = random_bf16(size_t(tokens * d), 1.0, rng), w2 = random_bf16(size_t(E * d * n), 1.0 / std::sqrt(double(n)), rng),
             h = random_bf16(size_t(TK * 2 * n), 1.0, rng);
  std::vector<float> scores(static_cast<size_t>(TK));
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  for (float& v : scores) v = uniform(rng);

  DeviceBuffer<bfloat16> d_dout(dout), d_w2(w2), d_h(h), d_grad_h(size_t(TK * 2 * n)), d_a(size_t(TK * n));
  DeviceBuffer<float> d_scores(scores), d_ds(size_t(TK * ds_cols));
  DeviceBuffer<int32_t> d_off(g.offsets), d_gather(g.gather), d_scatter(g.scatter);
  const DownProjActGradParams p{.grad_out = d_dout.get(), .w2 = d_w2.get(), .h = d_h.get(), .scores = d_scores.get(),
                                .expert_offsets = d_off.get(), .gather_idx = d_gather.get(),
                                .scatter_idx = d_scatter.get(), .grad_h = d_grad_h.get(), .a_scaled = d_a.get(),
                                .ds_partial = d_ds.get(), .num_tokens = tokens, .num_rows = TK, .hidden = d,
                                .intermediate = n, .num_experts = E};
  d_grad_h.poison();
  d_a.poison();
  d_ds.poison();
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_down_proj_act_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got_grad_h = d_grad_h.download(), got_a = d_a.download();
  const auto got_ds_partial = d_ds.download();

  std::vector<double> ref_grad_h(static_cast<size_t>(TK * 2 * n)), ref_a(static_cast<size_t>(TK * n)),
      ref_ds(static_cast<size_t>(TK), 0.0), got_ds(static_cast<size_t>(TK));
  std::vector<double> da(static_cast<size_t>(n));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = g.offsets[size_t(e)]; r < g.offsets[size_t(e + 1)]; ++r) {
      const int64_t t = g.gather[size_t(r)], slot = g.scatter[size_t(r)];
      const double s = scores[size_t(slot)];
      std::fill(da.begin(), da.end(), 0.0);
      for (int64_t k = 0; k < d; ++k) {
        const double o = float(dout[size_t(t * d + k)]);
        for (int64_t j = 0; j < n; ++j) da[size_t(j)] += o * double(float(w2[size_t((e * d + k) * n + j)]));
      }
      for (int64_t j = 0; j < n; ++j) {
        const double gate = float(h[size_t(r * 2 * n + 2 * j)]), up = float(h[size_t(r * 2 * n + 2 * j + 1)]);
        const double sig = 1.0 / (1.0 + std::exp(-gate)), silu = gate * sig, a = silu * up;
        ref_grad_h[size_t(r * 2 * n + 2 * j)] = s * da[size_t(j)] * up * sig * (1.0 + gate * (1.0 - sig));
        ref_grad_h[size_t(r * 2 * n + 2 * j + 1)] = s * da[size_t(j)] * silu;
        ref_a[size_t(r * n + j)] = s * a;
        ref_ds[size_t(slot)] += da[size_t(j)] * a;
      }
    }
  for (int64_t i = 0; i < TK; ++i) {
    double sum = 0;
    for (int64_t c = 0; c < ds_cols; ++c) sum += got_ds_partial[size_t(i * ds_cols + c)];
    got_ds[size_t(i)] = sum;
  }
  const double err_dh = relative_frobenius(to_double(got_grad_h), ref_grad_h);
  const double err_a = relative_frobenius(to_double(got_a), ref_a);
  const double err_ds = relative_frobenius(got_ds, ref_ds);
  EXPECT_LT(err_dh, 2 * bf16_floor(ref_grad_h) + 1e-4) << "grad_h";
  EXPECT_LT(err_a, 2 * bf16_floor(ref_a) + 1e-4) << "a_scaled";
  EXPECT_LT(err_ds, 1e-4) << "dS (fp32 partial sums)";
  // Again, on poisoned outputs: the same bits.
  d_grad_h.poison();
  d_a.poison();
  d_ds.poison();
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_down_proj_act_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(bitwise_equal(d_grad_h.download(), got_grad_h)) << "grad_h not repeatable";
  EXPECT_TRUE(bitwise_equal(d_a.download(), got_a)) << "a_scaled not repeatable";
  const auto again = d_ds.download();
  EXPECT_EQ(std::memcmp(again.data(), got_ds_partial.data(), again.size() * sizeof(float)), 0) << "dS not repeatable";
}

TEST(GroupedGemmDownProjActGrad, EdgeExpertSizesAndTails) { check_act_grad({0, 1, 127, 128, 129, 0, 700}, 800, 200, 72); }
TEST(GroupedGemmDownProjActGrad, SkewedSeveralNTiles) {
  check_act_grad({1500, 100, 250, 0, 400, 250, 500}, 2048, 264, 520);
}
TEST(GroupedGemmDownProjActGrad, RealisticWidth) { check_act_grad({300, 200, 0, 520}, 1024, 1536, 256); }
// hidden >= kDownProjActGradCooperativeMinHidden: the cooperative 128x256 tile (the ones above
// run ping-pong), with the same edge cases.
TEST(GroupedGemmDownProjActGrad, CooperativeEdgeExpertSizesAndTails) {
  check_act_grad({0, 1, 127, 128, 129, 0, 300}, 800, 3080, 72);
}
TEST(GroupedGemmDownProjActGrad, CooperativeSkewedSeveralNTiles) {
  check_act_grad({600, 1, 0, 130, 255}, 1024, 3136, 520);
}

// More tiles than CTAs (<= 132 on an H100/H200), so that every CTA's persistent loop runs
// several tiles: 400 experts of 0-129 rows; ping-pong (hidden 264: 480 tiles of 64 rows, the two
// warpgroups alternating) and cooperative (hidden 3072: 400 tiles of 128 rows).
TEST(GroupedGemmDownProjActGrad, PingPongManyTilesPerCta) {
  check_act_grad(repeated_counts({1, 0, 2, 1, 129}, 80), 2048, 264, 72);
}
TEST(GroupedGemmDownProjActGrad, CooperativeManyTilesPerCta) {
  check_act_grad(repeated_counts({1, 0, 2, 1, 129}, 80), 2048, 3072, 72);
}

// Tails of every length on the cooperative tile: the epilogue writes nothing past the expert's
// end, whatever the tail.
TEST(GroupedGemmDownProjActGrad, CooperativeEveryTailLength) {
  check_act_grad(every_tail_counts(fresh_seed()), 1024, 3080, 72);
}

TEST(GroupedGemmDownProjActGradValidation, RejectsBadArguments) {
  alignas(16) static bfloat16 buf[64];
  alignas(16) static float fbuf[16];
  alignas(16) static int32_t idx[8];
  const DownProjActGradParams good{.grad_out = buf, .w2 = buf, .h = buf, .scores = fbuf, .expert_offsets = idx,
                                   .gather_idx = idx, .scatter_idx = idx, .grad_h = buf, .a_scaled = buf,
                                   .ds_partial = fbuf, .num_tokens = 4, .num_rows = 4, .hidden = 8,
                                   .intermediate = 8, .num_experts = 2};
  EXPECT_TRUE(validate(good).ok());
  auto p = good;
  p.scatter_idx = nullptr;
  EXPECT_EQ(validate(p).argument(), "scatter_idx");
  p = good;
  p.intermediate = 4;
  EXPECT_EQ(validate(p).argument(), "intermediate");
  p = good;
  p.h = buf + 1;
  EXPECT_EQ(validate(p).argument(), "h");
  p = good;
  p.num_rows = 0;
  p.h = nullptr;
  p.scores = nullptr;
  EXPECT_TRUE(validate(p).ok()) << "nothing routed: row arrays may be null";
}

}  // namespace
}  // namespace sonicmoe::gpu_testing
