// The CPU reference layer: forward against an independent per-token formula, the backward
// against finite differences in float64 and against the independent naive backward, edge cases,
// and the element types bf16/fp32.
#include <algorithm>
#include <cmath>
#include <functional>

#include "test_util.h"

namespace sonicmoe::testing {
namespace {

using reference::detail::activation_forward;
using reference::detail::RouteEntry;

TEST(ReferenceActivation, KnownValues) {
  const double h_swiglu[4] = {1.0, 2.0, -3.0, 0.5};  // (gate, up) pairs
  double a[2];
  activation_forward(Activation::swiglu, h_swiglu, a, 2);
  EXPECT_NEAR(a[0], 1.0 / (1.0 + std::exp(-1.0)) * 2.0, 1e-15);  // silu(1) * 2
  EXPECT_NEAR(a[1], -3.0 / (1.0 + std::exp(3.0)) * 0.5, 1e-15);
  const double h[3] = {-1.0, 0.0, 3.0};
  double r[3];
  activation_forward(Activation::relu_squared, h, r, 3);
  EXPECT_EQ(r[0], 0.0);
  EXPECT_EQ(r[1], 0.0);
  EXPECT_EQ(r[2], 9.0);
  activation_forward(Activation::gelu_tanh, h, r, 3);
  EXPECT_NEAR(r[0], -0.15880800939172324, 1e-12);
  EXPECT_EQ(r[1], 0.0);
  EXPECT_NEAR(r[2], 2.996362607918227, 1e-12);  // python: 0.5*v*(1+tanh(sqrt(2/pi)*(v+0.044715*v**3)))
}

// out[t] = Σ_i s_i (W2_e act(W1_e x_t + b1_e) + b2_e) over the saved entries of t, computed
// token by token with no metadata; H checked row by row through gather_idx.
void expect_forward_matches_per_token_formula(LayerData& L) {
  const std::vector<double> x = L.x.values(), w1 = L.w1.values(), w2 = L.w2.values();
  std::vector<double> expect(static_cast<size_t>(L.T * L.d), 0.0), h(static_cast<size_t>(L.hc)),
      a(static_cast<size_t>(L.n));
  std::vector<double> expect_h(static_cast<size_t>(L.num_routed() * L.hc)), got_h(expect_h.size());
  for (int64_t i = 0; i < L.num_routed(); ++i) {
    const int64_t t = L.token_idx[size_t(i)], e = L.expert_idx[size_t(i)];
    for (int64_t c = 0; c < L.hc; ++c) {
      double acc = L.config.has_bias ? L.b1.at(e * L.hc + c) : 0.0;
      for (int64_t k = 0; k < L.d; ++k) acc += w1[size_t((e * L.hc + c) * L.d + k)] * x[size_t(t * L.d + k)];
      h[size_t(c)] = acc;
      const int64_t row = L.reverse[size_t(i)];
      expect_h[size_t(row * L.hc + c)] = reference::detail::round_to(L.config.dtype, acc);
    }
    activation_forward(L.config.activation, h.data(), a.data(), L.n);
    for (int64_t c = 0; c < L.d; ++c) {
      double y = L.config.has_bias ? L.b2.at(e * L.d + c) : 0.0;
      for (int64_t j = 0; j < L.n; ++j) y += w2[size_t((e * L.d + c) * L.n + j)] * a[size_t(j)];
      expect[size_t(t * L.d + c)] += double(L.scores[size_t(i)]) * y;
    }
  }
  for (size_t i = 0; i < got_h.size(); ++i) got_h[i] = L.h.at(int64_t(i));
  EXPECT_EQ(relative_error(got_h, expect_h), 0.0) << "H differs from W1_e x_t + b1_e";
  // The reference weights by the unrounded double score; the formula above by the fp32 one.
  EXPECT_LT(relative_error(L.out.values(), expect), 1e-6);
}

struct LayerCase {
  const char* name;
  LayerConfig config;
};

std::string case_name(const ::testing::TestParamInfo<LayerCase>& info) { return info.param.name; }
void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

LayerConfig tr(int64_t T, int64_t d, int64_t n, int64_t E, int64_t K, RoundingMode mode, int32_t tile_m,
               Activation act = Activation::swiglu, bool bias = false) {
  return make_config(T, d, n, E, K, DType::float64, act, bias, RoutingKind::token_rounding, {mode, tile_m});
}

const LayerCase kGradientCases[] = {
    {"TopK_SwiGLU", make_config(6, 16, 8, 4, 2)},
    {"TopK_SwiGLU_Bias", make_config(6, 16, 8, 4, 2, DType::float64, Activation::swiglu, true)},
    {"TopK_ReluSquared_Bias", make_config(5, 8, 16, 5, 3, DType::float64, Activation::relu_squared, true)},
    {"TopK_Gelu", make_config(5, 8, 8, 3, 1, DType::float64, Activation::gelu_tanh)},
    {"TopK_KEqualsE", make_config(4, 8, 8, 3, 3, DType::float64, Activation::swiglu, true)},
    {"TopK_OneToken", make_config(1, 16, 8, 4, 2, DType::float64, Activation::swiglu, true)},
    {"TopK_KIsOne", make_config(7, 8, 8, 4, 1)},
    {"TokenRounding_Nearest", tr(16, 8, 8, 4, 2, RoundingMode::nearest, 4)},
    {"TokenRounding_Up_Bias", tr(16, 8, 8, 4, 2, RoundingMode::up, 4, Activation::swiglu, true)},
    {"TokenRounding_Down", tr(16, 8, 8, 4, 2, RoundingMode::down, 4, Activation::relu_squared)},
    {"TokenRounding_NearestTile3", tr(13, 8, 8, 5, 2, RoundingMode::nearest, 3, Activation::gelu_tanh, true)},
};

// dS of the routed entries (the arrays are sized for the capacity).
std::vector<double> routed_scores(const LayerData& L) {
  return std::vector<double>(L.grad_scores.begin(), L.grad_scores.begin() + L.num_routed());
}

class ReferenceGradient : public ::testing::TestWithParam<LayerCase> {};

// Central differences of loss = Σ grad_out ⊙ out over every element of one input, with the
// router's discrete choice checked to stay fixed.
std::vector<double> finite_difference(LayerData& L, Buffer& param, double eps) {
  EXPECT_TRUE(L.forward().ok());
  const std::vector<int32_t> base_token = L.token_idx, base_expert = L.expert_idx;
  std::vector<double> fd(static_cast<size_t>(param.count));
  for (int64_t j = 0; j < param.count; ++j) {
    const double v = param.at(j);
    double loss[2];
    for (int side = 0; side < 2; ++side) {
      param.set(j, side == 0 ? v + eps : v - eps);
      EXPECT_TRUE(L.forward().ok());
      EXPECT_TRUE(L.token_idx == base_token && L.expert_idx == base_expert)
          << "routing changed under a perturbation of " << eps << " (seed " << test_seed() << ")";
      loss[side] = L.loss();
    }
    param.set(j, v);
    fd[size_t(j)] = (loss[0] - loss[1]) / (2 * eps);
  }
  EXPECT_TRUE(L.forward().ok());
  return fd;
}

TEST_P(ReferenceGradient, MatchesFiniteDifferences) {
  LayerData L(GetParam().config, test_seed());
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  SONICMOE_ASSERT_OK(L.forward());
  expect_forward_matches_per_token_formula(L);
  SONICMOE_ASSERT_OK(L.backward());
  const std::vector<double> grad_x = L.grad_x.values(), grad_w1 = L.grad_w1.values(),
                            grad_w2 = L.grad_w2.values(), grad_wr = L.grad_wr.values();
  const double eps = 1e-6, tol = 1e-7;
  EXPECT_LT(relative_error(grad_x, finite_difference(L, L.x, eps)), tol) << "dx";
  EXPECT_LT(relative_error(grad_w1, finite_difference(L, L.w1, eps)), tol) << "dW1";
  EXPECT_LT(relative_error(grad_w2, finite_difference(L, L.w2, eps)), tol) << "dW2";
  EXPECT_LT(relative_error(grad_wr, finite_difference(L, L.wr, eps)), tol) << "dWr";
  if (L.config.has_bias) {
    const std::vector<double> grad_b1 = L.grad_b1.values(), grad_b2 = L.grad_b2.values();
    EXPECT_LT(relative_error(grad_b1, finite_difference(L, L.b1, eps)), tol) << "db1";
    EXPECT_LT(relative_error(grad_b2, finite_difference(L, L.b2, eps)), tol) << "db2";
  }
}

TEST_P(ReferenceGradient, ScoreGradientPathEqualsNaiveBackward) {
  LayerData L(GetParam().config, test_seed() + 1);
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  SONICMOE_ASSERT_OK(L.forward());
  SONICMOE_ASSERT_OK(L.backward());
  const auto fast = std::vector<std::vector<double>>{L.grad_x.values(), L.grad_w1.values(), L.grad_w2.values(),
                                                     L.grad_wr.values(), L.grad_b1.values(), L.grad_b2.values(),
                                                     routed_scores(L)};
  SONICMOE_ASSERT_OK(L.backward_naive());
  const auto naive = std::vector<std::vector<double>>{L.grad_x.values(), L.grad_w1.values(), L.grad_w2.values(),
                                                      L.grad_wr.values(), L.grad_b1.values(), L.grad_b2.values(),
                                                      routed_scores(L)};
  const char* names[] = {"dx", "dW1", "dW2", "dWr", "db1", "db2", "dS"};
  for (size_t i = 0; i < fast.size(); ++i) {
    const double tol = i == 6 ? 1e-6 : 1e-12;  // dS is returned in fp32
    EXPECT_LT(relative_error(fast[i], naive[i]), tol) << names[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Layers, ReferenceGradient, ::testing::ValuesIn(kGradientCases), case_name);

// General routing: a varying number of experts per token (0 to E), an expert with no rows,
// d and n not multiples of 64. The scores are inputs: their gradient dS is checked exactly
// (the output is linear in each score), the weights' and x's by finite differences.
TEST(ReferenceGeneralRouting, GradientsAndNaiveAgree) {
  LayerConfig c = make_config(5, 72, 40, 4, 2, DType::float64, Activation::swiglu, true, RoutingKind::general);
  LayerData L(c, test_seed() + 2);
  SCOPED_TRACE(::testing::Message() << "seed " << test_seed());
  // token 0: experts {0, 2}; token 1: none; token 2: {0, 1, 2}; token 3: {2}; token 4: {1, 0}.
  // Expert 3 gets no rows.
  L.set_general_routing({{0, 0, 0.7}, {0, 2, 0.3}, {2, 0, 0.2}, {2, 1, 0.5}, {2, 2, 0.3}, {3, 2, 1.0},
                         {4, 1, 0.6}, {4, 0, 0.9}});
  SONICMOE_ASSERT_OK(L.forward());
  expect_forward_matches_per_token_formula(L);
  EXPECT_EQ(L.offsets[3], L.offsets[4]) << "expert 3 has rows";
  for (int64_t c2 = 0; c2 < L.d; ++c2) EXPECT_EQ(L.out.at(1 * L.d + c2), 0.0) << "unrouted token 1 not zero";
  SONICMOE_ASSERT_OK(L.backward());
  const std::vector<double> grad_x = L.grad_x.values(), grad_w1 = L.grad_w1.values(), grad_w2 = L.grad_w2.values(),
                            grad_b1 = L.grad_b1.values();
  const std::vector<double> grad_scores = to_double(L.grad_scores);
  const double eps = 1e-6;
  EXPECT_LT(relative_error(grad_x, finite_difference(L, L.x, eps)), 1e-7);
  EXPECT_LT(relative_error(grad_w1, finite_difference(L, L.w1, eps)), 1e-7);
  EXPECT_LT(relative_error(grad_w2, finite_difference(L, L.w2, eps)), 1e-7);
  EXPECT_LT(relative_error(grad_b1, finite_difference(L, L.b1, eps)), 1e-7);
  // dS by secant on the stored fp32 score (exact up to rounding: out is linear in each score).
  std::vector<double> fd_scores(grad_scores.size());
  for (size_t i = 0; i < L.input_scores.size(); ++i) {
    const float v = L.input_scores[i];
    const float up = v + 0.25f, down = v - 0.25f;
    L.input_scores[i] = up;
    SONICMOE_ASSERT_OK(L.forward());
    const double loss_up = L.loss();
    L.input_scores[i] = down;
    SONICMOE_ASSERT_OK(L.forward());
    fd_scores[i] = (loss_up - L.loss()) / (double(up) - double(down));
    L.input_scores[i] = v;
  }
  EXPECT_LT(relative_error(grad_scores, fd_scores), 1e-6) << "dS (fp32 output)";
  SONICMOE_ASSERT_OK(L.forward());
  SONICMOE_ASSERT_OK(L.backward_naive());
  EXPECT_LT(relative_error(L.grad_x.values(), grad_x), 1e-12);
  EXPECT_LT(relative_error(L.grad_w1.values(), grad_w1), 1e-12);
  EXPECT_LT(relative_error(to_double(L.grad_scores), grad_scores), 1e-6);
}

// Every grouped-order tensor row belongs to the expert its offsets say, including experts with
// no rows, at a size where d and n are not multiples of 64 and several experts are empty.
TEST(ReferenceEdgeCases, EmptyExpertsAndOddSizes) {
  LayerConfig c = make_config(3, 200, 72, 16, 2, DType::float64, Activation::swiglu, true);
  LayerData L(c, test_seed() + 3);
  SONICMOE_ASSERT_OK(L.forward());
  int empty = 0;
  for (int64_t e = 0; e < L.E; ++e) empty += L.offsets[size_t(e)] == L.offsets[size_t(e + 1)];
  EXPECT_GE(empty, 10) << "3 tokens x 2 experts over 16 experts leave at least 10 empty";
  expect_forward_matches_per_token_formula(L);
  SONICMOE_ASSERT_OK(L.backward());
  const std::vector<double> grad_w1 = L.grad_w1.values();
  // Gradients of experts without rows are exactly zero, not unwritten.
  for (int64_t e = 0; e < L.E; ++e) {
    if (L.offsets[size_t(e)] != L.offsets[size_t(e + 1)]) continue;
    for (int64_t i = 0; i < L.hc * L.d; ++i) ASSERT_EQ(grad_w1[size_t(e * L.hc * L.d + i)], 0.0);
  }
  const std::vector<double> grad_x = L.grad_x.values();
  SONICMOE_ASSERT_OK(L.backward_naive());
  EXPECT_LT(relative_error(L.grad_x.values(), grad_x), 1e-12);
  EXPECT_LT(relative_error(L.grad_w1.values(), grad_w1), 1e-12);
}

// bf16 and fp32 storage: the same layer as float64, rounded on input; errors of the stored
// tensors against the float64 ground truth sit at the element type's precision, and the
// "straightforward implementation" mode (transients rounded) is measurably worse in bf16.
TEST(ReferenceDTypes, Bf16AndFp32AgainstFloat64) {
  const LayerConfig base = make_config(32, 64, 32, 8, 2, DType::float64, Activation::swiglu, true);
  LayerData ref(base, test_seed() + 4);
  for (DType t : {DType::float32, DType::bfloat16}) {
    LayerConfig c = base;
    c.dtype = t;
    LayerData L(c, 0);
    // Same inputs, rounded to t; the float64 copy is rounded the same way so only the
    // computation differs.
    for (auto [dst, src] : {std::pair{&L.x, &ref.x}, {&L.wr, &ref.wr}, {&L.w1, &ref.w1}, {&L.w2, &ref.w2},
                            {&L.b1, &ref.b1}, {&L.b2, &ref.b2}, {&L.grad_out, &ref.grad_out}})
      for (int64_t i = 0; i < src->count; ++i) dst->set(i, src->at(i));
    LayerData exact(base, 0);
    for (auto [dst, src] : {std::pair{&exact.x, &L.x}, {&exact.wr, &L.wr}, {&exact.w1, &L.w1}, {&exact.w2, &L.w2},
                            {&exact.b1, &L.b1}, {&exact.b2, &L.b2}, {&exact.grad_out, &L.grad_out}})
      for (int64_t i = 0; i < src->count; ++i) dst->set(i, src->at(i));
    SONICMOE_ASSERT_OK(exact.forward());
    SONICMOE_ASSERT_OK(exact.backward());
    SONICMOE_ASSERT_OK(L.forward());
    ASSERT_EQ(L.expert_idx, exact.expert_idx) << to_string(t) << " routing differs";
    const double unit = t == DType::bfloat16 ? 1.0 / 256 : 1.0 / (1 << 23);
    const double out_err = relative_error(L.out.values(), exact.out.values());
    EXPECT_LT(out_err, 2 * unit) << to_string(t) << " out";
    SONICMOE_ASSERT_OK(L.backward());
    EXPECT_LT(relative_error(L.grad_w1.values(), exact.grad_w1.values()), 4 * unit) << to_string(t) << " dW1";
    EXPECT_LT(relative_error(L.grad_x.values(), exact.grad_x.values()), 4 * unit) << to_string(t) << " dx";
    if (t == DType::bfloat16) {
      SONICMOE_ASSERT_OK(L.forward({.round_transients = true}));
      const double plain_err = relative_error(L.out.values(), exact.out.values());
      EXPECT_GT(plain_err, out_err) << "rounding A and Y must add error";
      EXPECT_LT(plain_err, 8 * unit);
    }
  }
}

// The memory contract's arithmetic: 2Td + 2·TK·h_cols bytes + fp32 scores + int32 routing.
TEST(ReferenceMemoryContract, SavedStateBytes) {
  const LayerConfig c = make_config(24576, 1536, 256, 128, 8, DType::bfloat16);
  const int64_t TK = 24576 * 8;
  const int64_t expect = 2 * 24576 * 1536 + 4 * TK * 256 + 4 * TK + 5 * 4 * TK + 4 * 129;
  EXPECT_EQ(saved_state_bytes(c, TK), expect);
}

}  // namespace
}  // namespace sonicmoe::testing
