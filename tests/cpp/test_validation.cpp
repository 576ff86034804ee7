// Bad input gets a clear error naming the argument and the rule — never a crash.
#include <cmath>
#include <functional>

#include "test_util.h"

namespace sonicmoe::testing {
namespace {

// Expects an invalid_argument naming `argument`, with `rule_part` somewhere in the message.
void expect_rejected(const Status& s, const std::string& argument, const std::string& rule_part) {
  EXPECT_EQ(s.code(), StatusCode::invalid_argument) << s.message();
  EXPECT_EQ(s.argument(), argument) << s.message();
  EXPECT_NE(s.message().find(rule_part), std::string::npos) << "message: " << s.message();
  EXPECT_NE(s.message().find("'" + argument + "'"), std::string::npos) << "message: " << s.message();
}

TEST(Status, MessageNamesArgumentAndRule) {
  const Status s = Status::invalid_argument("top_k", "must be <= num_experts (got 9 > 8)");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "invalid argument 'top_k': must be <= num_experts (got 9 > 8)");
  EXPECT_TRUE(Status().ok());
  EXPECT_THROW(throw_if_error(s), Error);
  try {
    throw_if_error(s);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), s.message());
    EXPECT_EQ(e.status().argument(), "top_k");
  }
}

// A valid small layer whose forward parameters each test breaks in one place.
struct Fixture {
  LayerData L;
  explicit Fixture(LayerConfig c = make_config(4, 16, 8, 4, 2)) : L(c, 7) {}
  Status forward_with(const std::function<void(ForwardParams&)>& edit) {
    ForwardParams p = L.forward_params();
    edit(p);
    return reference::moe_forward(p);
  }
  Status backward_with(const std::function<void(BackwardParams&)>& edit) {
    EXPECT_TRUE(L.forward().ok());
    BackwardParams p = L.backward_params();
    edit(p);
    return reference::moe_backward(p);
  }
};

TEST(BadInput, NonPositiveSizes) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.num_tokens = 0; }), "shape.num_tokens", "> 0");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.hidden = -8; }), "shape.hidden", "> 0");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.intermediate = 0; }), "shape.intermediate",
                  "> 0");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.num_experts = 0; }), "shape.num_experts",
                  "> 0");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.top_k = -1; }), "shape.top_k", "> 0");
}

TEST(BadInput, TopKLargerThanExperts) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.top_k = 5; }), "shape.top_k",
                  "<= shape.num_experts");
  std::vector<float> logits(8);
  std::vector<int32_t> idx(8);
  std::vector<float> scores(8);
  expect_rejected(reference::route_top_k({.num_tokens = 2, .num_experts = 4, .top_k = 5, .logits = logits.data(),
                                          .token_idx = idx.data(), .expert_idx = idx.data(), .scores = scores.data()}),
                  "top_k", "<= num_experts");
}

TEST(BadInput, MisalignedHiddenOrIntermediate) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.hidden = 12; }), "shape.hidden",
                  "multiple of 8");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.shape.intermediate = 4; }), "shape.intermediate",
                  "multiple of 8");
}

TEST(BadInput, UnknownEnumValues) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.activation = Activation(9); }), "activation",
                  "unknown");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.routing = RoutingKind(9); }), "routing", "unknown");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.dtype = DType(9); }), "dtype", "must be");
  expect_rejected(f.forward_with([](ForwardParams& p) {
                    p.config.routing = RoutingKind::token_rounding;
                    p.config.rounding.tile_m = 0;
                  }),
                  "rounding.tile_m", "> 0");
}

TEST(BadInput, NullPointersAndBiasMismatch) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.x = nullptr; }), "x", "null");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.experts.w1 = nullptr; }), "experts.w1", "null");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.out = nullptr; }), "out", "null");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.router_weight = nullptr; }), "router_weight", "null");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.saved.h = nullptr; }), "saved.h", "null");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.experts.b1 = p.experts.w1; }), "experts.b1",
                  "must be null when config.has_bias is false");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.has_bias = true; }), "experts.b1",
                  "must not be null when config.has_bias is true");
  expect_rejected(f.backward_with([](BackwardParams& p) { p.grad_w2 = nullptr; }), "grad_w2", "null");
  expect_rejected(f.backward_with([](BackwardParams& p) { p.grad_router_weight = nullptr; }), "grad_router_weight",
                  "null");
}

TEST(BadInput, MismatchedSizes) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.saved.capacity = 7; }), "saved.capacity",
                  "need 8 for top_k routing");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.config.routing = RoutingKind::token_rounding; }),
                  "saved.capacity", "token_rounding");
  // Backward: the saved state claims more rows than its arrays hold, or rows the router did not make.
  expect_rejected(f.backward_with([](BackwardParams& p) { p.saved.capacity = 4; }), "saved.capacity",
                  "num_tokens * top_k");
  expect_rejected(f.backward_with([](BackwardParams& p) { p.saved.metadata.expert_offsets[4] = 7; }),
                  "saved.metadata.expert_offsets", "num_tokens * top_k");
  expect_rejected(f.backward_with([](BackwardParams& p) { std::swap(p.saved.metadata.gather_idx[0], p.saved.metadata.gather_idx[7]); }),
                  "saved.metadata.gather_idx", "does not match");
  expect_rejected(f.backward_with([&](BackwardParams& p) {
                    // Route token 0's first slot to an expert the router did not choose.
                    for (int32_t e = 0; e < 4; ++e)
                      if (e != p.saved.expert_idx[0] && e != p.saved.expert_idx[1]) {
                        p.saved.expert_idx[0] = e;
                        break;
                      }
                  }),
                  "saved.metadata.expert_offsets", "does not match");
  std::vector<int32_t> idx(4);
  std::vector<float> logits(8), scores(4);
  int64_t count = 0;
  expect_rejected(reference::route_token_rounding({.num_tokens = 2, .num_experts = 4, .top_k = 2,
                                                   .options = {RoundingMode::up, 4}, .logits = logits.data(),
                                                   .capacity = 4, .token_idx = idx.data(), .expert_idx = idx.data(),
                                                   .scores = scores.data(), .num_routed = &count}),
                  "capacity", "token_rounding_capacity");
}

// General routing input: out-of-range, unsorted, duplicated or non-finite entries.
class GeneralRoutingInput : public ::testing::Test {
 protected:
  Fixture f{make_config(4, 16, 8, 4, 2, DType::float64, Activation::swiglu, false, RoutingKind::general)};
  void SetUp() override { f.L.set_general_routing({{0, 1, .5}, {0, 3, .5}, {1, 0, 1}, {3, 2, .7}, {3, 1, .3}}); }
  Status run() { return f.forward_with([](ForwardParams&) {}); }
};

TEST_F(GeneralRoutingInput, ValidListIsAccepted) { SONICMOE_ASSERT_OK(run()); }

TEST_F(GeneralRoutingInput, TokenOutOfRange) {
  f.L.input_token[4] = 4;
  expect_rejected(run(), "routing_input.token_idx", "outside [0, num_tokens=4)");
  f.L.input_token[4] = 3;
  f.L.input_token[0] = -1;
  expect_rejected(run(), "routing_input.token_idx", "outside");
}

TEST_F(GeneralRoutingInput, ExpertOutOfRange) {
  f.L.input_expert[2] = 4;
  expect_rejected(run(), "routing_input.expert_idx", "outside [0, num_experts=4)");
  f.L.input_expert[2] = -3;
  expect_rejected(run(), "routing_input.expert_idx", "outside");
}

TEST_F(GeneralRoutingInput, UnsortedTokens) {
  std::swap(f.L.input_token[1], f.L.input_token[2]);  // 0, 1, 0, 3, 3
  expect_rejected(run(), "routing_input.token_idx", "sorted by token");
}

TEST_F(GeneralRoutingInput, DuplicateExpertForOneToken) {
  f.L.input_expert[4] = 2;
  expect_rejected(run(), "routing_input.expert_idx", "twice");
}

TEST_F(GeneralRoutingInput, NonFiniteScore) {
  f.L.input_scores[3] = INFINITY;
  expect_rejected(run(), "routing_input.scores", "not finite");
}

TEST_F(GeneralRoutingInput, RouterWeightNotAllowedAndCapacityChecked) {
  expect_rejected(f.forward_with([&](ForwardParams& p) { p.router_weight = f.L.wr.data(); }), "router_weight",
                  "general routing");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.saved.capacity = 4; }), "saved.capacity", "need 5");
  expect_rejected(f.forward_with([](ForwardParams& p) { p.routing_input.expert_idx = nullptr; }),
                  "routing_input.expert_idx", "null");
}

TEST(BadInput, RoutingInputOnlyForGeneralRouting) {
  Fixture f;
  std::vector<int32_t> idx = {0};
  std::vector<float> s = {1};
  expect_rejected(f.forward_with([&](ForwardParams& p) { p.routing_input = {1, idx.data(), idx.data(), s.data()}; }),
                  "routing_input", "unless config.routing is general");
}

// An inference forward keeps nothing: a saved state passed with it would silently stay unfilled.
TEST(BadInput, InferenceForwardTakesNoSavedState) {
  Fixture f;
  expect_rejected(f.forward_with([](ForwardParams& p) { p.inference = true; }), "saved", "must be empty");
  // The CPU reference always fills the saved state, so it refuses inference mode outright.
  const Status s = f.forward_with([](ForwardParams& p) {
    p.inference = true;
    p.saved = SavedState{};
  });
  EXPECT_EQ(s.code(), StatusCode::unsupported) << s.message();
  EXPECT_EQ(s.argument(), "inference");
}

}  // namespace
}  // namespace sonicmoe::testing
