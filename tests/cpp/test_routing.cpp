// Routing reference: router logits, top-K softmax and the routing metadata, checked against
// brute-force statements of their invariants.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "test_util.h"

namespace sonicmoe::testing {
namespace {

std::vector<float> random_logits(int64_t T, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::vector<float> logits(static_cast<size_t>(T * E));
  for (float& v : logits) v = normal(rng);
  return logits;
}

struct TopK {
  std::vector<int32_t> token, expert;
  std::vector<float> score;
};

TopK run_top_k(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K) {
  TopK r;
  r.token.assign(static_cast<size_t>(T * K), -1);
  r.expert.assign(static_cast<size_t>(T * K), -1);
  r.score.assign(static_cast<size_t>(T * K), std::nanf(""));
  const Status s = reference::route_top_k({.num_tokens = T, .num_experts = E, .top_k = K, .logits = logits.data(),
                                           .token_idx = r.token.data(), .expert_idx = r.expert.data(),
                                           .scores = r.score.data()});
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

TEST(RouterLogits, MatchesDotProducts) {
  const int64_t T = 5, d = 24, E = 6;
  LayerData L(make_config(T, d, 8, E, 2), test_seed());
  std::vector<float> logits(static_cast<size_t>(T * E), std::nanf(""));
  SONICMOE_ASSERT_OK(reference::router_logits({.num_tokens = T, .hidden = d, .num_experts = E, .dtype = DType::float64,
                                               .x = L.x.data(), .router_weight = L.wr.data(), .logits = logits.data()}));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) {
      double acc = 0;
      for (int64_t k = 0; k < d; ++k) acc += L.x.at(t * d + k) * L.wr.at(e * d + k);
      EXPECT_EQ(logits[size_t(t * E + e)], float(acc));
    }
}

class TopKRouting : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

TEST_P(TopKRouting, Invariants) {
  const auto [T, E, K] = GetParam();
  const std::vector<float> logits = random_logits(T, E, test_seed());
  const TopK r = run_top_k(logits, T, E, K);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits.data() + t * E;
    std::set<int32_t> experts;
    double sum = 0, denom = 0;
    for (int64_t k = 0; k < K; ++k) denom += std::exp(double(row[r.expert[size_t(t * K + k)]]));
    for (int64_t k = 0; k < K; ++k) {
      const size_t i = size_t(t * K + k);
      EXPECT_EQ(r.token[i], t);
      ASSERT_GE(r.expert[i], 0);
      ASSERT_LT(r.expert[i], E);
      experts.insert(r.expert[i]);
      sum += r.score[i];
      EXPECT_NEAR(r.score[i], std::exp(double(row[r.expert[i]])) / denom, 1e-6);
      if (k > 0) {
        EXPECT_GE(r.score[i - 1], r.score[i]) << "slots by descending score";
      }
    }
    EXPECT_EQ(int64_t(experts.size()), K) << "token " << t << ": experts not distinct";
    EXPECT_NEAR(sum, 1.0, 1e-6);
    // Every chosen logit is >= every unchosen one.
    float min_chosen = INFINITY, max_other = -INFINITY;
    for (int64_t e = 0; e < E; ++e) {
      if (experts.count(int32_t(e)))
        min_chosen = std::min(min_chosen, row[e]);
      else
        max_other = std::max(max_other, row[e]);
    }
    EXPECT_GE(min_chosen, max_other);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, TopKRouting,
                         ::testing::Values(std::tuple{1, 8, 2}, std::tuple{50, 16, 4}, std::tuple{33, 5, 1},
                                           std::tuple{20, 6, 6}, std::tuple{7, 128, 8}));

TEST(TopKRouting, TiesGoToTheLowerExpert) {
  const std::vector<float> logits = {1, 3, 3, 2, 3,  // token 0
                                     0, 0, 0, 0, 0};  // token 1: all tied
  TopK r = run_top_k(logits, 2, 5, 3);
  EXPECT_EQ(r.expert, (std::vector<int32_t>{1, 2, 4, 0, 1, 2}));
  for (int i = 3; i < 6; ++i) EXPECT_FLOAT_EQ(r.score[size_t(i)], 1.f / 3);
  r = run_top_k(logits, 2, 5, 2);
  EXPECT_EQ(r.expert, (std::vector<int32_t>{1, 2, 0, 1}));
}

TEST(TopKRouting, RejectsNonFiniteLogits) {
  std::vector<float> logits = {0, 1, std::nanf(""), 2};
  std::vector<int32_t> token(2), expert(2);
  std::vector<float> score(2);
  const Status s = reference::route_top_k({.num_tokens = 2, .num_experts = 2, .top_k = 1, .logits = logits.data(),
                                           .token_idx = token.data(), .expert_idx = expert.data(),
                                           .scores = score.data()});
  EXPECT_EQ(s.code(), StatusCode::invalid_argument);
  EXPECT_EQ(s.argument(), "logits");
  EXPECT_NE(s.message().find("token 1, expert 0"), std::string::npos) << s.message();
}

// Metadata of any routing list: offsets are the prefix sum of counts; grouped rows are sorted
// by (expert, token); gather/scatter/reverse are consistent permutations.
void expect_metadata_invariants(const RoutingList& list, int64_t T, int64_t E) {
  const int64_t TK = list.num_routed;
  std::vector<int32_t> offsets(static_cast<size_t>(E + 1), -1), gather(static_cast<size_t>(TK), -1),
      scatter(static_cast<size_t>(TK), -1), reverse(static_cast<size_t>(TK), -1);
  SONICMOE_ASSERT_OK(reference::build_routing_metadata(
      {.num_tokens = T, .num_experts = E, .routing = list,
       .metadata = {offsets.data(), gather.data(), scatter.data(), reverse.data()}}));
  std::vector<int32_t> count(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < TK; ++i) ++count[size_t(list.expert_idx[i])];
  EXPECT_EQ(offsets[0], 0);
  for (int64_t e = 0; e < E; ++e) EXPECT_EQ(offsets[size_t(e + 1)] - offsets[size_t(e)], count[size_t(e)]);
  EXPECT_EQ(offsets[size_t(E)], TK);
  std::vector<int32_t> sorted_scatter = scatter;
  std::sort(sorted_scatter.begin(), sorted_scatter.end());
  for (int64_t i = 0; i < TK; ++i) ASSERT_EQ(sorted_scatter[size_t(i)], i) << "scatter_idx is not a permutation";
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = offsets[size_t(e)]; r < offsets[size_t(e + 1)]; ++r) {
      const int32_t slot = scatter[size_t(r)];
      EXPECT_EQ(list.expert_idx[slot], e) << "row " << r;
      EXPECT_EQ(gather[size_t(r)], list.token_idx[slot]) << "row " << r;
      EXPECT_EQ(reverse[size_t(slot)], r) << "slot " << slot;
      if (r > offsets[size_t(e)]) {
        EXPECT_LT(gather[size_t(r - 1)], gather[size_t(r)]) << "tokens ascending in expert";
      }
    }
}

TEST(RoutingMetadata, FromTopK) {
  const int64_t T = 64, E = 16, K = 4;
  const TopK r = run_top_k(random_logits(T, E, test_seed() + 1), T, E, K);
  expect_metadata_invariants({T * K, r.token.data(), r.expert.data(), r.score.data()}, T, E);
}

TEST(RoutingMetadata, FromGeneralRoutingWithEmptyExpertsAndTokens) {
  // Variable experts per token, token 2 unrouted, expert 1 and 4 empty.
  const std::vector<int32_t> token = {0, 0, 0, 1, 3, 3, 4};
  const std::vector<int32_t> expert = {5, 0, 3, 0, 3, 2, 5};
  const std::vector<float> score = {.2f, .3f, .5f, 1.f, .6f, .4f, 1.f};
  expect_metadata_invariants({7, token.data(), expert.data(), score.data()}, 5, 6);
}

TEST(RoutingMetadata, EmptyList) {
  std::vector<int32_t> offsets(4, -1);
  SONICMOE_ASSERT_OK(reference::build_routing_metadata(
      {.num_tokens = 3, .num_experts = 3, .routing = {}, .metadata = {offsets.data(), nullptr, nullptr, nullptr}}));
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 0, 0, 0}));
}

}  // namespace
}  // namespace sonicmoe::testing
