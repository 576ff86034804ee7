// The gather-and-sum kernels (src/combine/combine.h) against double host loops: combine_rows on
// top-K (top_k > 0) and general (top_k == 0, binary search in token_idx) routing, with and
// without scores, tokens without entries, d not a multiple of 64, a device length below the
// capacity; finish_score_grad with and without the bias term; expert_column_sums with gather and
// row scale and plain, experts without rows. Outputs are poisoned first; each result must be
// within 1e-2 relative Frobenius error of the double sums, equal bit for bit to a host fp32
// emulation of the documented summation order, and the same on a second run. Argument checks run
// on every machine; GPU cases skip visibly without a Hopper GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "combine/combine.h"
#include "gpu/gpu_test_util.h"
#include "gpu/ragged_routing.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::gpu_testing {
namespace {

using combine::CombineRowsParams;
using combine::ExpertColumnSumParams;
using combine::ScoreGradParams;

bool float_bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// A flat routing list with its grouped rows (reference metadata).
struct FlatRouting {
  std::vector<int32_t> token, expert, offsets, gather, scatter, reverse;
  std::vector<float> score;
  int64_t size() const { return int64_t(token.size()); }
};

// experts_per_token[t] distinct experts for token t (top-K when constant).
FlatRouting make_routing(const std::vector<int>& experts_per_token, int64_t E, std::mt19937_64& rng) {
  FlatRouting r;
  std::vector<int32_t> experts(static_cast<size_t>(E));
  std::iota(experts.begin(), experts.end(), 0);
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  for (size_t t = 0; t < experts_per_token.size(); ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);
    for (int k = 0; k < experts_per_token[t]; ++k) {
      r.token.push_back(int32_t(t));
      r.expert.push_back(experts[size_t(k)]);
      r.score.push_back(uniform(rng));
    }
  }
  const int64_t TK = r.size();
  r.offsets.resize(size_t(E + 1));
  r.gather.resize(size_t(TK));
  r.scatter.resize(size_t(TK));
  r.reverse.resize(size_t(TK));
  const Status s = reference::build_routing_metadata(
      {.num_tokens = int64_t(experts_per_token.size()), .num_experts = E,
       .routing = {.num_routed = TK, .token_idx = r.token.data(), .expert_idx = r.expert.data(), .scores = r.score.data()},
       .metadata = {.expert_offsets = r.offsets.data(), .gather_idx = r.gather.data(), .scatter_idx = r.scatter.data(),
                    .reverse_idx = r.reverse.data()}});
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

// ---- combine_rows ------------------------------------------------------------------------------

// top_k > 0: every token has top_k entries (token t: t*K .. t*K+K-1). top_k == 0: the given
// counts per token, arrays padded to `capacity` with garbage the kernel must not read.
void check_combine(const std::vector<int>& experts_per_token, int64_t E, int64_t d, int64_t top_k, bool with_scores,
                   int64_t extra_capacity) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  const int64_t T = int64_t(experts_per_token.size());
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " T=" << T << " d=" << d << " top_k=" << top_k
                                    << " scores=" << with_scores << " extra=" << extra_capacity);
  std::mt19937_64 rng(seed);
  const FlatRouting r = make_routing(experts_per_token, E, rng);
  const int64_t TK = r.size(), capacity = TK + extra_capacity;
  std::vector<int32_t> token = r.token, reverse = r.reverse;
  std::vector<float> score = r.score;
  for (int64_t i = TK; i < capacity; ++i) {  // garbage past the device length
    token.push_back(0);
    reverse.push_back(int32_t(rng() % uint64_t(capacity)));
    score.push_back(1e30f);
  }
  const auto rows = random_bf16(size_t(capacity * d), 1.0, rng);

  // Double sums, and the kernel's fp32 order: fma over the token's entries in flat order.
  std::vector<double> want(size_t(T * d), 0.0);
  std::vector<bfloat16> emulated(static_cast<size_t>(T * d));
  int64_t i = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t first = i;
    while (i < TK && r.token[size_t(i)] == t) ++i;
    for (int64_t c = 0; c < d; ++c) {
      float acc = 0.0f;
      for (int64_t j = first; j < i; ++j) {
        const float w = with_scores ? r.score[size_t(j)] : 1.0f;
        const float x = float(rows[size_t(int64_t(r.reverse[size_t(j)]) * d + c)]);
        want[size_t(t * d + c)] += double(w) * double(x);
        acc = std::fma(w, x, acc);
      }
      emulated[size_t(t * d + c)] = bfloat16(acc);
    }
  }

  DeviceBuffer<int32_t> d_token(token), d_reverse(reverse), d_num_routed(std::vector<int32_t>{int32_t(TK)});
  DeviceBuffer<float> d_score(score);
  DeviceBuffer<bfloat16> d_rows(rows), d_out(static_cast<size_t>(T * d));
  const CombineRowsParams p{.num_tokens = T, .hidden = d, .capacity = capacity, .top_k = top_k,
                            .num_routed = d_num_routed.get(), .token_idx = top_k == 0 ? d_token.get() : nullptr,
                            .reverse_idx = d_reverse.get(), .scores = with_scores ? d_score.get() : nullptr,
                            .rows = d_rows.get(), .out = d_out.get()};
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(combine::combine_rows(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = d_out.download();
  EXPECT_LT(relative_frobenius(to_double(got), want), 1e-2);
  EXPECT_TRUE(bitwise_equal(got, emulated)) << "not the fp32 sum in flat entry order rounded once";
  for (int64_t t = 0; t < T; ++t)
    if (experts_per_token[size_t(t)] == 0)
      for (int64_t c = 0; c < d; ++c) ASSERT_EQ(got[size_t(t * d + c)].bits, 0) << "token " << t << " has no entries";
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(combine::combine_rows(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(bitwise_equal(d_out.download(), got)) << "not repeatable";
}

std::vector<int> constant(int64_t T, int k) { return std::vector<int>(size_t(T), k); }

std::vector<int> varying(int64_t T, int max_per_token, std::mt19937_64& rng) {
  std::vector<int> v(static_cast<size_t>(T));
  for (auto& c : v) c = int(rng() % uint64_t(max_per_token + 1));
  v[0] = 0;  // first, last and a run of tokens without entries
  v[size_t(T - 1)] = 0;
  for (int64_t t = T / 2; t < std::min<int64_t>(T, T / 2 + 5); ++t) v[size_t(t)] = 0;
  return v;
}

TEST(CombineRowsGpu, TopKWithScores) {
  check_combine(constant(1000, 8), 64, 2888, 8, true, 0);
  check_combine(constant(333, 2), 8, 768, 2, true, 0);
  check_combine(constant(1, 1), 4, 4096, 1, true, 0);
}

TEST(CombineRowsGpu, TopKWithoutScores) {
  check_combine(constant(700, 4), 16, 64, 4, false, 0);
  check_combine(constant(50, 8), 8, 8, 8, false, 0);  // K == E, one vector per row
}

TEST(CombineRowsGpu, GeneralRoutingBinarySearch) {
  std::mt19937_64 rng(fresh_seed());
  check_combine(varying(1200, 12, rng), 16, 2888, 0, true, 0);
  check_combine(varying(257, 64, rng), 64, 1032, 0, false, 0);  // up to 64 entries: two batches of 32
  check_combine(varying(3000, 4, rng), 8, 120, 0, true, 0);     // several tokens per block
}

TEST(CombineRowsGpu, GeneralRoutingDeviceLengthBelowCapacity) {
  std::mt19937_64 rng(fresh_seed());
  check_combine(varying(900, 6, rng), 32, 520, 0, true, 1000);
  check_combine(constant(64, 0), 8, 256, 0, true, 40);  // nothing routed: zeros everywhere
}

TEST(CombineRowsGpu, LargeRealisticShape) { check_combine(constant(4096, 8), 128, 4096, 8, true, 0); }

// ---- finish_score_grad -------------------------------------------------------------------------

void check_score_grad(int64_t capacity, int64_t length, int64_t cols, bool bias) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " capacity=" << capacity << " length=" << length
                                    << " cols=" << cols << " bias=" << bias);
  std::mt19937_64 rng(seed);
  const int64_t T = 300, E = 12, d = 1032;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> partial(static_cast<size_t>(capacity * cols));
  for (float& v : partial) v = normal(rng);
  std::vector<int32_t> token(static_cast<size_t>(capacity)), expert(static_cast<size_t>(capacity));
  for (int64_t i = 0; i < capacity; ++i) {
    token[size_t(i)] = int32_t(rng() % T);
    expert[size_t(i)] = int32_t(rng() % E);
  }
  const auto grad_out = random_bf16(size_t(T * d), 1.0, rng), b2 = random_bf16(size_t(E * d), 0.1, rng);

  std::vector<double> want(static_cast<size_t>(length));
  std::vector<float> emulated_sum(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) {
    float s = 0.0f;
    for (int64_t j = 0; j < cols; ++j) s += partial[size_t(i * cols + j)];
    emulated_sum[size_t(i)] = s;
    double w = s;
    if (bias)
      for (int64_t c = 0; c < d; ++c)
        w += double(float(grad_out[size_t(token[size_t(i)] * d + c)])) * double(float(b2[size_t(expert[size_t(i)] * d + c)]));
    want[size_t(i)] = w;
  }

  DeviceBuffer<float> d_partial(partial), d_grad(static_cast<size_t>(capacity));
  DeviceBuffer<int32_t> d_token(token), d_expert(expert), d_length(std::vector<int32_t>{int32_t(length)});
  DeviceBuffer<bfloat16> d_grad_out(grad_out), d_b2(b2);
  const ScoreGradParams p{.capacity = capacity, .partial_cols = cols, .hidden = d, .num_tokens = T, .num_experts = E,
                          .num_routed = d_length.get(),
                          .partial = d_partial.get(), .token_idx = d_token.get(), .expert_idx = d_expert.get(),
                          .grad_out = d_grad_out.get(), .b2 = bias ? d_b2.get() : nullptr,
                          .grad_scores = d_grad.get()};
  d_grad.poison();
  SONICMOE_ASSERT_OK_GPU(combine::finish_score_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = d_grad.download();
  std::vector<double> got_head(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) got_head[size_t(i)] = got[size_t(i)];
  EXPECT_LT(relative_frobenius(got_head, want), bias ? 1e-5 : 1e-6);
  if (!bias)
    EXPECT_TRUE(float_bits_equal(std::vector<float>(got.begin(), got.begin() + length), emulated_sum))
        << "not the fp32 sum over columns in increasing order";
  for (int64_t i = length; i < capacity; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &got[size_t(i)], 4);
    ASSERT_EQ(bits, 0xFFFFFFFFu) << "entry " << i << " past the device length was written";
  }
  d_grad.poison();
  SONICMOE_ASSERT_OK_GPU(combine::finish_score_grad(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(float_bits_equal(d_grad.download(), got)) << "not repeatable";
}

TEST(ScoreGradGpu, WithoutBias) {
  check_score_grad(3000, 3000, 3, false);
  check_score_grad(3000, 2500, 40, false);  // columns past one warp's 32
  check_score_grad(100, 0, 8, false);
}

TEST(ScoreGradGpu, WithBias) {
  check_score_grad(2000, 2000, 8, true);
  check_score_grad(2000, 1234, 1, true);
}

// ---- expert_column_sums ------------------------------------------------------------------------

void check_column_sums(const std::vector<int>& counts, int64_t tokens, int64_t cols, bool gather_and_scale) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed << " cols=" << cols << " gather_and_scale=" << gather_and_scale);
  std::mt19937_64 rng(seed);
  const Ragged g(counts, tokens, rng);
  const int64_t TK = g.rows(), E = g.experts(), src_rows = gather_and_scale ? tokens : std::max<int64_t>(TK, 1);
  const auto src = random_bf16(size_t(src_rows * cols), 1.0, rng);
  std::vector<float> scale(static_cast<size_t>(TK));
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  for (float& v : scale) v = uniform(rng);

  std::vector<double> want(size_t(E * cols), 0.0);
  std::vector<bfloat16> emulated(static_cast<size_t>(E * cols));
  for (int64_t e = 0; e < E; ++e)
    for (int64_t c = 0; c < cols; ++c) {
      float acc = 0.0f;
      for (int64_t r = g.offsets[size_t(e)]; r < g.offsets[size_t(e + 1)]; ++r) {
        const int64_t row = gather_and_scale ? g.gather[size_t(r)] : r;
        const float w = gather_and_scale ? scale[size_t(g.scatter[size_t(r)])] : 1.0f;
        const float x = float(src[size_t(row * cols + c)]);
        want[size_t(e * cols + c)] += double(w) * double(x);
        acc = std::fma(w, x, acc);
      }
      emulated[size_t(e * cols + c)] = bfloat16(acc);
    }

  DeviceBuffer<int32_t> d_off(g.offsets), d_gather(g.gather), d_scatter(g.scatter);
  DeviceBuffer<float> d_scale(scale);
  DeviceBuffer<bfloat16> d_src(src), d_out(static_cast<size_t>(E * cols));
  const ExpertColumnSumParams p{.num_experts = E, .cols = cols, .src_rows = src_rows, .capacity = TK,
                                .expert_offsets = d_off.get(),
                                .gather_idx = gather_and_scale ? d_gather.get() : nullptr,
                                .scatter_idx = gather_and_scale ? d_scatter.get() : nullptr,
                                .row_scale = gather_and_scale ? d_scale.get() : nullptr, .src = d_src.get(),
                                .out = d_out.get()};
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(combine::expert_column_sums(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = d_out.download();
  EXPECT_LT(relative_frobenius(to_double(got), want), 1e-2);
  EXPECT_TRUE(bitwise_equal(got, emulated)) << "not the fp32 sum over the expert's rows in order, rounded once";
  for (int64_t e = 0; e < E; ++e)
    if (counts[size_t(e)] == 0)
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(got[size_t(e * cols + c)].bits, 0) << "expert " << e;
  d_out.poison();
  SONICMOE_ASSERT_OK_GPU(combine::expert_column_sums(p, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(bitwise_equal(d_out.download(), got)) << "not repeatable";
}

const std::vector<int> kEdgeCounts = {0, 1, 127, 300, 0, 33, 129};

TEST(ExpertColumnSumsGpu, GatherAndScale) {
  check_column_sums(kEdgeCounts, 400, 200, true);
  check_column_sums(kEdgeCounts, 400, 4104, true);  // several column chunks per expert
}

TEST(ExpertColumnSumsGpu, Plain) {
  check_column_sums(kEdgeCounts, 400, 264, false);
  check_column_sums({0, 0, 0}, 4, 64, false);
  check_column_sums({2000, 5}, 2048, 1024, false);
}

// ---- argument checks (no GPU needed) -------------------------------------------------------------

TEST(CombineValidation, RejectsBadArguments) {
  alignas(16) static bfloat16 buf[256];
  alignas(16) static float fbuf[64];
  alignas(16) static int32_t idx[64];
  const CombineRowsParams rows{.num_tokens = 4, .hidden = 16, .capacity = 8, .top_k = 2, .num_routed = idx,
                               .token_idx = idx, .reverse_idx = idx, .scores = fbuf, .rows = buf, .out = buf};
  auto arg = [](const CombineRowsParams& p) { return combine::combine_rows(p, nullptr).argument(); };
  auto r = rows;
  r.hidden = 12;
  EXPECT_EQ(arg(r), "hidden");
  r = rows;
  r.num_tokens = 0;
  EXPECT_EQ(arg(r), "num_tokens");
  r = rows;
  r.capacity = 7;
  EXPECT_EQ(arg(r), "capacity");
  r = rows;
  r.top_k = -1;
  EXPECT_EQ(arg(r), "top_k");
  r = rows;
  r.top_k = 0;
  r.num_routed = nullptr;
  EXPECT_EQ(arg(r), "num_routed");
  r = rows;
  r.top_k = 0;
  r.token_idx = nullptr;
  EXPECT_EQ(arg(r), "token_idx");
  r = rows;
  r.reverse_idx = nullptr;
  EXPECT_EQ(arg(r), "reverse_idx");
  r = rows;
  r.rows = buf + 1;
  EXPECT_EQ(arg(r), "rows");
  r = rows;
  r.out = buf + 4;
  EXPECT_EQ(arg(r), "out");
  r = rows;
  r.scores = fbuf + 0;
  r.out = nullptr;
  EXPECT_EQ(arg(r), "out");

  const ScoreGradParams sg{.capacity = 8, .partial_cols = 2, .hidden = 16, .num_tokens = 4, .num_experts = 4, .num_routed = idx, .partial = fbuf,
                           .token_idx = idx, .expert_idx = idx, .grad_out = buf, .b2 = buf, .grad_scores = fbuf};
  auto sg_arg = [](const ScoreGradParams& p) { return combine::finish_score_grad(p, nullptr).argument(); };
  auto s = sg;
  s.partial_cols = 0;
  EXPECT_EQ(sg_arg(s), "partial_cols");
  s = sg;
  s.partial = nullptr;
  EXPECT_EQ(sg_arg(s), "partial");
  s = sg;
  s.hidden = 10;
  EXPECT_EQ(sg_arg(s), "hidden");
  s = sg;
  s.grad_out = nullptr;
  EXPECT_EQ(sg_arg(s), "grad_out");
  s = sg;
  s.grad_scores = nullptr;
  EXPECT_EQ(sg_arg(s), "grad_scores");

  const ExpertColumnSumParams cs{.num_experts = 2, .cols = 16, .src_rows = 8, .capacity = 8, .expert_offsets = idx,
                                 .gather_idx = idx, .scatter_idx = idx, .row_scale = fbuf, .src = buf, .out = buf};
  auto cs_arg = [](const ExpertColumnSumParams& p) { return combine::expert_column_sums(p, nullptr).argument(); };
  auto c = cs;
  c.cols = 20;
  EXPECT_EQ(cs_arg(c), "cols");
  c = cs;
  c.num_experts = 0;
  EXPECT_EQ(cs_arg(c), "num_experts");
  c = cs;
  c.src_rows = 0;
  EXPECT_EQ(cs_arg(c), "src_rows");
  c = cs;
  c.expert_offsets = nullptr;
  EXPECT_EQ(cs_arg(c), "expert_offsets");
  c = cs;
  c.scatter_idx = nullptr;
  EXPECT_EQ(cs_arg(c), "scatter_idx");
  c = cs;
  c.src = buf + 2;
  EXPECT_EQ(cs_arg(c), "src");
}

}  // namespace
}  // namespace sonicmoe::gpu_testing
