// The README's API example as a program: one top-K MoE layer through the CPU reference, forward
// and backward, with a bad call to show the error. Built and run by ctest as a smoke test.
#include <cstdio>
#include <random>
#include <vector>

#include "sonicmoe/sonicmoe.h"

int main() {
  using namespace sonicmoe;
  const int64_t T = 64, d = 32, n = 16, E = 8, K = 2;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto random_bf16 = [&](int64_t count, float scale) {
    std::vector<bfloat16> v(static_cast<size_t>(count));
    for (auto& e : v) e = bfloat16(normal(rng) * scale);
    return v;
  };
  std::vector<bfloat16> x = random_bf16(T * d, 1.f), wr = random_bf16(E * d, 0.18f),
                        w1 = random_bf16(E * 2 * n * d, 0.18f), w2 = random_bf16(E * d * n, 0.25f),
                        dout = random_bf16(T * d, 1.f);
  std::vector<bfloat16> out(T * d), h(T * K * 2 * n), dx(T * d), dw1(w1.size()), dw2(w2.size()), dwr(wr.size());
  std::vector<int32_t> tok(T * K), exp(T * K), offsets(E + 1), gather(T * K), scatter(T * K), reverse(T * K);
  std::vector<float> scores(T * K);

  LayerConfig config{.shape = {.num_tokens = T, .hidden = d, .intermediate = n, .num_experts = E, .top_k = K},
                     .activation = Activation::swiglu,
                     .has_bias = false,
                     .routing = RoutingKind::top_k,
                     .rounding = {},
                     .dtype = DType::bfloat16};
  ForwardParams fwd{.config = config,
                    .x = x.data(),
                    .router_weight = wr.data(),
                    .experts = {.w1 = w1.data(), .w2 = w2.data()},
                    .out = out.data(),
                    .saved = {.capacity = T * K,
                              .token_idx = tok.data(),
                              .expert_idx = exp.data(),
                              .scores = scores.data(),
                              .metadata = {offsets.data(), gather.data(), scatter.data(), reverse.data()},
                              .h = h.data()}};
  Status s = reference::moe_forward(fwd);
  if (!s.ok()) return std::puts(s.message().c_str()), 1;

  BackwardParams bwd{.config = config,
                     .x = x.data(),
                     .router_weight = wr.data(),
                     .experts = {.w1 = w1.data(), .w2 = w2.data()},
                     .saved = fwd.saved,
                     .grad_out = dout.data(),
                     .grad_x = dx.data(),
                     .grad_w1 = dw1.data(),
                     .grad_w2 = dw2.data(),
                     .grad_router_weight = dwr.data()};
  s = reference::moe_backward(bwd);
  if (!s.ok()) return std::puts(s.message().c_str()), 1;
  std::printf("forward + backward ok: TK=%d, expert 0 has %d rows, out[0]=%g, dx[0]=%g\n", offsets[E],
              offsets[1] - offsets[0], double(float(out[0])), double(float(dx[0])));

  fwd.config.shape.top_k = E + 1;  // a bad call: the error names the argument and the rule
  s = reference::moe_forward(fwd);
  std::printf("bad call -> %s\n", s.message().c_str());
  return s.code() == StatusCode::invalid_argument ? 0 : 1;
}
