// Token rounding (DESIGN.md §3) against brute-force statements of its rules: counts become
// multiples of tile_m, at most one tile changes per expert, drops take the expert's lowest-score
// top-K tokens, pads its highest-probability unchosen tokens with that probability as score,
// the modes do what they say, and ties resolve deterministically.
#include <algorithm>
#include <cmath>
#include <map>

#include "test_util.h"

namespace sonicmoe::testing {
namespace {

struct Rounded {
  std::vector<int32_t> token, expert;
  std::vector<float> score;
};

Rounded run_token_rounding(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K, RoundingMode mode,
                           int32_t tile_m) {
  const int64_t capacity = token_rounding_capacity(T, E, K, tile_m);
  Rounded r;
  r.token.assign(static_cast<size_t>(capacity), -1);
  r.expert.assign(static_cast<size_t>(capacity), -1);
  r.score.assign(static_cast<size_t>(capacity), std::nanf(""));
  int64_t num_routed = -1;
  const Status s = reference::route_token_rounding({.num_tokens = T, .num_experts = E, .top_k = K,
                                                    .options = {mode, tile_m}, .logits = logits.data(),
                                                    .capacity = capacity, .token_idx = r.token.data(),
                                                    .expert_idx = r.expert.data(), .scores = r.score.data(),
                                                    .num_routed = &num_routed});
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_GE(num_routed, 0);
  EXPECT_LE(num_routed, capacity);
  r.token.resize(static_cast<size_t>(num_routed));
  r.expert.resize(static_cast<size_t>(num_routed));
  r.score.resize(static_cast<size_t>(num_routed));
  return r;
}

// Independent statement of top-K and the full softmax on the same logits.
struct Oracle {
  std::vector<char> chosen;         // [T, E] in the top-K
  std::vector<double> topk_score;   // [T, E] renormalised over the top-K
  std::vector<double> probability;  // [T, E] softmax over all experts
  Oracle(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K)
      : chosen(static_cast<size_t>(T * E), 0), topk_score(static_cast<size_t>(T * E), 0.0),
        probability(static_cast<size_t>(T * E), 0.0) {
    for (int64_t t = 0; t < T; ++t) {
      const float* row = logits.data() + t * E;
      std::vector<int> order(static_cast<size_t>(E));
      for (int e = 0; e < E; ++e) order[size_t(e)] = e;
      std::sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
      double z_all = 0, z_top = 0;
      for (int64_t e = 0; e < E; ++e) z_all += std::exp(double(row[e]));
      for (int64_t k = 0; k < K; ++k) z_top += std::exp(double(row[order[size_t(k)]]));
      for (int64_t e = 0; e < E; ++e) probability[size_t(t * E + e)] = std::exp(double(row[e])) / z_all;
      for (int64_t k = 0; k < K; ++k) {
        const int e = order[size_t(k)];
        chosen[size_t(t * E + e)] = 1;
        topk_score[size_t(t * E + e)] = std::exp(double(row[e])) / z_top;
      }
    }
  }
};

void expect_rounding_rules(const std::vector<float>& logits, int64_t T, int64_t E, int64_t K, RoundingMode mode,
                           int32_t M) {
  SCOPED_TRACE(::testing::Message() << "T=" << T << " E=" << E << " K=" << K << " M=" << M << " mode="
                                    << to_string(mode) << " seed " << test_seed());
  const Oracle o(logits, T, E, K);
  const Rounded r = run_token_rounding(logits, T, E, K, mode, M);
  // A valid general routing list: token-sorted, distinct experts per token.
  SONICMOE_ASSERT_OK(validate_routing_list({int64_t(r.token.size()), r.token.data(), r.expert.data(), r.score.data()},
                                           T, E));
  std::vector<char> routed(static_cast<size_t>(T * E), 0);
  for (size_t i = 0; i < r.token.size(); ++i) {
    const int64_t cell = int64_t(r.token[i]) * E + r.expert[i];
    routed[size_t(cell)] = 1;
    const double expect = o.chosen[size_t(cell)] ? o.topk_score[size_t(cell)] : o.probability[size_t(cell)];
    EXPECT_NEAR(r.score[i], expect, 1e-6 * std::max(1.0, expect)) << "score of entry " << i;
  }
  for (int64_t e = 0; e < E; ++e) {
    int64_t before = 0, after = 0;
    double min_kept = INFINITY, max_dropped = -INFINITY, min_padded = INFINITY, max_unpadded = -INFINITY;
    for (int64_t t = 0; t < T; ++t) {
      const size_t cell = size_t(t * E + e);
      before += o.chosen[cell];
      after += routed[cell];
      if (o.chosen[cell]) {
        (routed[cell] ? min_kept : max_dropped) = routed[cell] ? std::min(min_kept, o.topk_score[cell])
                                                               : std::max(max_dropped, o.topk_score[cell]);
      } else {
        (routed[cell] ? min_padded : max_unpadded) = routed[cell] ? std::min(min_padded, o.probability[cell])
                                                                  : std::max(max_unpadded, o.probability[cell]);
      }
    }
    const int64_t down = before / M * M, up = (before + M - 1) / M * M;
    SCOPED_TRACE(::testing::Message() << "expert " << e << " count " << before << " -> " << after);
    EXPECT_EQ(after % M, 0) << "not a multiple of tile_m";
    EXPECT_TRUE(after == down || after == up) << "more than one tile changed";
    if (before % M == 0) {
      EXPECT_EQ(after, before) << "an exact multiple must not change";
    }
    const bool can_pad = T - before >= up - before;
    if (mode == RoundingMode::down) {
      EXPECT_EQ(after, down);
    }
    if (mode == RoundingMode::up) {
      EXPECT_EQ(after, can_pad ? up : down) << "up pads whenever enough tokens exist";
    }
    if (mode == RoundingMode::nearest) {
      const bool pad = (up - before) < (before - down) && can_pad;
      EXPECT_EQ(after, pad ? up : down);
    }
    // Only drops below the count, only pads above it.
    if (after <= before) {
      EXPECT_EQ(min_padded, INFINITY) << "padded while rounding down";
    }
    if (after >= before) {
      EXPECT_EQ(max_dropped, -INFINITY) << "dropped while rounding up";
    }
    EXPECT_GE(min_kept, max_dropped) << "dropped a token scoring above a kept one";
    EXPECT_GE(min_padded, max_unpadded) << "padded a token less probable than one left out";
  }
}

class TokenRoundingRules : public ::testing::TestWithParam<std::tuple<int, int, int, RoundingMode, int>> {};

TEST_P(TokenRoundingRules, Hold) {
  const auto [T, E, K, mode, M] = GetParam();
  std::mt19937_64 rng(test_seed() + uint64_t(T * 131 + E * 7 + K));
  std::normal_distribution<float> normal(0.f, 1.5f);
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<float> logits(static_cast<size_t>(T * E));
    for (float& v : logits) v = normal(rng);
    expect_rounding_rules(logits, T, E, K, mode, M);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TokenRoundingRules,
    ::testing::Values(std::tuple{64, 8, 2, RoundingMode::nearest, 8}, std::tuple{64, 8, 2, RoundingMode::up, 8},
                      std::tuple{64, 8, 2, RoundingMode::down, 8}, std::tuple{300, 16, 4, RoundingMode::nearest, 16},
                      std::tuple{300, 16, 4, RoundingMode::up, 16}, std::tuple{300, 16, 4, RoundingMode::down, 16},
                      std::tuple{512, 32, 8, RoundingMode::nearest, 128}, std::tuple{40, 4, 4, RoundingMode::up, 16},
                      std::tuple{10, 6, 1, RoundingMode::up, 128}),
    [](const auto& info) {
      return "T" + std::to_string(std::get<0>(info.param)) + "_E" + std::to_string(std::get<1>(info.param)) + "_K" +
             std::to_string(std::get<2>(info.param)) + "_" + to_string(std::get<3>(info.param)) + "_M" +
             std::to_string(std::get<4>(info.param));
    });

TEST(TokenRounding, ExactMultiplesLeaveTopKUnchanged) {
  // 8 tokens, 2 experts, K=1; tokens 0-3 prefer expert 0, 4-7 expert 1: counts 4 and 4.
  std::vector<float> logits;
  for (int t = 0; t < 8; ++t) logits.insert(logits.end(), t < 4 ? std::initializer_list<float>{1.f + t, 0.f}
                                                                 : std::initializer_list<float>{0.f, 1.f + t});
  for (RoundingMode mode : {RoundingMode::nearest, RoundingMode::up, RoundingMode::down}) {
    const Rounded r = run_token_rounding(logits, 8, 2, 1, mode, 4);
    ASSERT_EQ(r.token.size(), 8u);
    for (int t = 0; t < 8; ++t) {
      EXPECT_EQ(r.token[size_t(t)], t);
      EXPECT_EQ(r.expert[size_t(t)], t < 4 ? 0 : 1);
      EXPECT_EQ(r.score[size_t(t)], 1.f);
    }
  }
}

TEST(TokenRounding, TiesAreDeterministic) {
  // Padding ties: tokens 0-2 prefer expert 0, 3-5 expert 1 (counts 3, 3; tile 4). Each expert
  // pads one token of equal probability: the lowest token index wins.
  std::vector<float> logits;
  for (int t = 0; t < 6; ++t) logits.insert(logits.end(), t < 3 ? std::initializer_list<float>{1.f, 0.f}
                                                                 : std::initializer_list<float>{0.f, 1.f});
  Rounded r = run_token_rounding(logits, 6, 2, 1, RoundingMode::up, 4);
  EXPECT_EQ(r.token, (std::vector<int32_t>{0, 0, 1, 2, 3, 3, 4, 5}));
  EXPECT_EQ(r.expert, (std::vector<int32_t>{0, 1, 0, 0, 0, 1, 1, 1}));
  // Dropping ties: all six tokens tie on expert 0 (K=1, score 1). Nearest with 2 over and 2
  // missing drops (a tie drops); among equal scores the highest tokens go first.
  const std::vector<float> flat(12, 0.f);
  r = run_token_rounding(flat, 6, 2, 1, RoundingMode::nearest, 4);
  EXPECT_EQ(r.token, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(r.expert, (std::vector<int32_t>{0, 0, 0, 0}));
  // Up cannot pad (no token left outside expert 0): it drops instead.
  EXPECT_EQ(run_token_rounding(flat, 6, 2, 1, RoundingMode::up, 4).token, r.token);
  // And the whole thing is a function of its input.
  const std::vector<float> random = [] {
    std::mt19937_64 rng(test_seed());
    std::normal_distribution<float> normal;
    std::vector<float> v(300 * 16);
    for (float& x : v) x = normal(rng);
    return v;
  }();
  const Rounded a = run_token_rounding(random, 300, 16, 4, RoundingMode::nearest, 16);
  const Rounded b = run_token_rounding(random, 300, 16, 4, RoundingMode::nearest, 16);
  EXPECT_EQ(a.token, b.token);
  EXPECT_EQ(a.expert, b.expert);
  EXPECT_EQ(a.score, b.score);
}

// One token and a tile larger than the batch: every expert rounds down to zero rows, and the
// layer still runs: zero output, zero expert gradients.
TEST(TokenRounding, EverythingDroppedLayerStillRuns) {
  LayerConfig c = make_config(1, 16, 8, 4, 2, DType::float64, Activation::swiglu, true, RoutingKind::token_rounding,
                              {RoundingMode::nearest, 128});
  LayerData L(c, test_seed());
  SONICMOE_ASSERT_OK(L.forward());
  EXPECT_EQ(L.num_routed(), 0);
  for (double v : L.out.values()) EXPECT_EQ(v, 0.0);
  SONICMOE_ASSERT_OK(L.backward());
  for (double v : L.grad_x.values()) EXPECT_EQ(v, 0.0);
  for (double v : L.grad_w1.values()) EXPECT_EQ(v, 0.0);
  for (double v : L.grad_wr.values()) EXPECT_EQ(v, 0.0);
}

}  // namespace
}  // namespace sonicmoe::testing
