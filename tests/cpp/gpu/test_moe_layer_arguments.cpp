// tests/cpp/gpu/test_moe_layer_arguments.cpp — argument checks of the GPU layer that run on every
// machine: moe_forward / moe_backward validate shapes, options, pointers and the workspace on the
// host before any CUDA call, so these need no GPU (the pointers below are never dereferenced).
// Also the workspace sizing: deterministic, 256-byte granular, growing with the capacity.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "sonicmoe/gpu_layer.h"

namespace sonicmoe {
namespace {

// Stand-in addresses: aligned, never read (every case below fails validation first).
alignas(256) unsigned char fake_memory[4096];
void* fake(int offset = 0) { return fake_memory + offset; }

LayerConfig small_config(RoutingKind routing = RoutingKind::top_k) {
  return LayerConfig{.shape = {64, 128, 64, 8, 2}, .routing = routing, .dtype = DType::bfloat16};
}

ForwardParams forward_params(const LayerConfig& c) {
  const int64_t rows = routed_capacity(c, 0);
  return ForwardParams{.config = c,
                       .x = fake(),
                       .router_weight = fake(),
                       .experts = {.w1 = fake(), .w2 = fake()},
                       .out = fake(),
                       .saved = {.capacity = rows,
                                 .token_idx = static_cast<int32_t*>(fake()),
                                 .expert_idx = static_cast<int32_t*>(fake()),
                                 .scores = static_cast<float*>(fake()),
                                 .metadata = {static_cast<int32_t*>(fake()), static_cast<int32_t*>(fake()),
                                              static_cast<int32_t*>(fake()), static_cast<int32_t*>(fake())},
                                 .h = fake()}};
}

void expect_rejected(const Status& s, StatusCode code, const std::string& argument) {
  EXPECT_EQ(s.code(), code) << s.message();
  EXPECT_EQ(s.argument(), argument) << s.message();
}

TEST(MoeLayerArguments, ForwardRefusesWhatTheGpuLayerDoesNotSupport) {
  const LayerConfig c = small_config();
  const int64_t ws = forward_workspace_bytes(c, routed_capacity(c, 0), false);
  ForwardParams p = forward_params(c);
  p.config.dtype = DType::float32;
  expect_rejected(moe_forward(p, fake(), ws, nullptr), StatusCode::unsupported, "dtype");
  p = forward_params(c);
  p.config.activation = Activation::relu_squared;
  p.config.shape.intermediate = 128;  // h_cols = n for a non-gated activation: shapes stay valid
  expect_rejected(moe_forward(p, fake(), ws, nullptr), StatusCode::unsupported, "activation");
  p = forward_params(c);
  p.config.shape.num_experts = 2048;
  expect_rejected(moe_forward(p, fake(), ws, nullptr), StatusCode::unsupported, "shape.num_experts");
}

TEST(MoeLayerArguments, ForwardChecksShapesPointersAndWorkspace) {
  const LayerConfig c = small_config();
  const int64_t ws = forward_workspace_bytes(c, routed_capacity(c, 0), false);
  ForwardParams p = forward_params(c);
  p.config.shape.top_k = 9;
  expect_rejected(moe_forward(p, fake(), ws, nullptr), StatusCode::invalid_argument, "shape.top_k");
  p = forward_params(c);
  p.x = nullptr;
  expect_rejected(moe_forward(p, fake(), ws, nullptr), StatusCode::invalid_argument, "x");
  p = forward_params(c);
  p.saved.capacity -= 1;
  expect_rejected(moe_forward(p, fake(), ws, nullptr), StatusCode::invalid_argument, "saved.capacity");
  expect_rejected(moe_forward(forward_params(c), fake(), ws - 1, nullptr), StatusCode::invalid_argument,
                  "workspace_bytes");
  expect_rejected(moe_forward(forward_params(c), nullptr, ws, nullptr), StatusCode::invalid_argument, "workspace");
  expect_rejected(moe_forward(forward_params(c), fake(8), ws, nullptr), StatusCode::invalid_argument, "workspace");
  // An inference forward keeps nothing: a saved state passed with it is refused.
  p = forward_params(c);
  p.inference = true;
  expect_rejected(moe_forward(p, fake(), forward_workspace_bytes(c, routed_capacity(c, 0), true), nullptr),
                  StatusCode::invalid_argument, "saved");
}

TEST(MoeLayerArguments, BackwardChecksRouterGradientsAndWorkspace) {
  const LayerConfig c = small_config();
  const int64_t rows = routed_capacity(c, 0);
  const int64_t ws = backward_workspace_bytes(c, rows);
  const ForwardParams f = forward_params(c);
  BackwardParams p{.config = c,
                   .x = fake(),
                   .router_weight = fake(),
                   .experts = f.experts,
                   .saved = f.saved,
                   .grad_out = fake(),
                   .grad_x = fake(),
                   .grad_w1 = fake(),
                   .grad_w2 = fake(),
                   .grad_router_weight = fake()};
  expect_rejected(moe_backward(p, fake(), ws - 256, nullptr), StatusCode::invalid_argument, "workspace_bytes");
  BackwardParams q = p;
  q.grad_router_weight = nullptr;
  expect_rejected(moe_backward(q, fake(), ws, nullptr), StatusCode::invalid_argument, "grad_router_weight");
  q = p;
  q.grad_b1 = fake();  // a bias gradient without config.has_bias would silently stay unwritten
  expect_rejected(moe_backward(q, fake(), ws, nullptr), StatusCode::invalid_argument, "grad_b1");
}

TEST(MoeLayerArguments, WorkspaceSizes) {
  for (RoutingKind routing : {RoutingKind::top_k, RoutingKind::token_rounding, RoutingKind::general}) {
    SCOPED_TRACE(to_string(routing));
    const LayerConfig c = small_config(routing);
    const int64_t rows = routing == RoutingKind::general ? 100 : routed_capacity(c, 0);
    const int64_t f = forward_workspace_bytes(c, rows, false), b = backward_workspace_bytes(c, rows);
    EXPECT_EQ(f % 256, 0);
    EXPECT_EQ(b % 256, 0);
    EXPECT_EQ(f, forward_workspace_bytes(c, rows, false));
    // At least the transient A and Y of the forward, dH, s·A and dX̃ of the backward.
    EXPECT_GE(f, rows * (c.shape.intermediate + c.shape.hidden) * 2);
    EXPECT_GE(b, rows * (2 * c.shape.intermediate + c.shape.intermediate + c.shape.hidden) * 2);
    // An inference forward also holds H and the routing arrays.
    EXPECT_GE(forward_workspace_bytes(c, rows, true), f + rows * 2 * c.shape.intermediate * 2);
    EXPECT_GT(forward_workspace_bytes(c, 2 * rows, false), f);
  }
  const LayerConfig tr = small_config(RoutingKind::token_rounding);
  EXPECT_EQ(routed_capacity(tr, 0), token_rounding_capacity(64, 8, 2, 128));
  EXPECT_EQ(routed_capacity(small_config(RoutingKind::general), 77), 77);
}

}  // namespace
}  // namespace sonicmoe
