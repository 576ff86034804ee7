// Host-side ownership of one MoE layer's tensors for the CPU reference: typed buffers, inputs
// drawn at realistic magnitude, the saved state, and the forward/backward parameter structs
// filled from them. Used by the tests and by the main program's CPU run.
#pragma once

#include <cmath>
#include <random>
#include <vector>

#include "reference/reference_internal.h"
#include "sonicmoe/moe.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::reference {

// A host tensor of one DType, read and written as double.
struct Buffer {
  DType dtype = DType::float64;
  int64_t count = 0;
  std::vector<unsigned char> bytes;

  Buffer() = default;
  Buffer(DType t, int64_t n) : dtype(t), count(n), bytes(static_cast<size_t>(n * dtype_size(t))) {}
  void* data() { return count ? bytes.data() : nullptr; }
  const void* data() const { return count ? bytes.data() : nullptr; }
  double at(int64_t i) const { return detail::load_one(bytes.data(), dtype, i); }
  void set(int64_t i, double v) { detail::store_one(bytes.data(), dtype, i, v); }
  std::vector<double> values() const { return detail::load(bytes.data(), dtype, count); }
  void fill_normal(std::mt19937_64& rng, double stddev) {
    std::normal_distribution<double> normal(0.0, stddev);
    for (int64_t i = 0; i < count; ++i) set(i, normal(rng));
  }
  void poison() { fill_nan(); }
  void fill_nan() {
    for (int64_t i = 0; i < count; ++i) set(i, std::nan(""));
  }
};

// ‖a − b‖ / ‖b‖ (Frobenius); b is the reference. NaN anywhere gives NaN (never passes a <).
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  if (a.size() != b.size()) return INFINITY;
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Everything one layer needs on the host, with inputs drawn at realistic magnitude:
// x ~ N(0, 1), weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²), grad_out ~ N(0, 1).
struct LayerData {
  LayerConfig config;
  int64_t T, d, n, E, K, hc, capacity;
  Buffer x, wr, w1, b1, w2, b2, out, h;
  Buffer grad_out, grad_x, grad_wr, grad_w1, grad_b1, grad_w2, grad_b2;
  std::vector<int32_t> token_idx, expert_idx, offsets, gather, scatter, reverse;
  std::vector<float> scores, grad_scores;
  // General routing input (config.routing == general).
  std::vector<int32_t> input_token, input_expert;
  std::vector<float> input_scores;

  LayerData(const LayerConfig& c, uint64_t seed, int64_t general_capacity = 0)
      : config(c), T(c.shape.num_tokens), d(c.shape.hidden), n(c.shape.intermediate), E(c.shape.num_experts),
        K(c.shape.top_k), hc(h_cols(c)) {
    capacity = c.routing == RoutingKind::top_k ? T * K
               : c.routing == RoutingKind::token_rounding
                   ? token_rounding_capacity(T, E, K, c.rounding.tile_m)
                   : general_capacity;
    const DType t = c.dtype;
    x = Buffer(t, T * d);
    wr = Buffer(t, E * d);
    w1 = Buffer(t, E * hc * d);
    w2 = Buffer(t, E * d * n);
    if (c.has_bias) {
      b1 = Buffer(t, E * hc);
      b2 = Buffer(t, E * d);
      grad_b1 = Buffer(t, E * hc);
      grad_b2 = Buffer(t, E * d);
    }
    out = Buffer(t, T * d);
    grad_out = Buffer(t, T * d);
    grad_x = Buffer(t, T * d);
    grad_wr = Buffer(t, E * d);
    grad_w1 = Buffer(t, E * hc * d);
    grad_w2 = Buffer(t, E * d * n);
    std::mt19937_64 rng(seed);
    x.fill_normal(rng, 1.0);
    wr.fill_normal(rng, 1.0 / std::sqrt(double(d)));
    w1.fill_normal(rng, 1.0 / std::sqrt(double(d)));
    w2.fill_normal(rng, 1.0 / std::sqrt(double(n)));
    if (c.has_bias) {
      b1.fill_normal(rng, 0.1);
      b2.fill_normal(rng, 0.1);
    }
    grad_out.fill_normal(rng, 1.0);
    resize_saved();
  }

  void resize_saved() {
    h = Buffer(config.dtype, capacity * hc);
    token_idx.assign(static_cast<size_t>(capacity), -1);
    expert_idx.assign(static_cast<size_t>(capacity), -1);
    scores.assign(static_cast<size_t>(capacity), std::nanf(""));
    gather.assign(static_cast<size_t>(capacity), -1);
    scatter.assign(static_cast<size_t>(capacity), -1);
    reverse.assign(static_cast<size_t>(capacity), -1);
    offsets.assign(static_cast<size_t>(E + 1), -1);
    grad_scores.assign(static_cast<size_t>(capacity), std::nanf(""));
  }

  // General routing input; entries must already be in flat (token) order.
  void set_general_routing(const std::vector<detail::RouteEntry>& entries) {
    input_token.clear();
    input_expert.clear();
    input_scores.clear();
    for (const auto& r : entries) {
      input_token.push_back(r.token);
      input_expert.push_back(r.expert);
      input_scores.push_back(float(r.score));
    }
    capacity = int64_t(entries.size());
    resize_saved();
  }

  int64_t num_routed() const { return offsets[static_cast<size_t>(E)]; }

  SavedState saved() {
    return SavedState{
        .capacity = capacity,
        .token_idx = token_idx.data(),
        .expert_idx = expert_idx.data(),
        .scores = scores.data(),
        .metadata = {offsets.data(), gather.data(), scatter.data(), reverse.data()},
        .h = h.data(),
    };
  }
  ExpertWeights experts() const { return {w1.data(), b1.data(), w2.data(), b2.data()}; }
  const void* router() const { return config.routing == RoutingKind::general ? nullptr : wr.data(); }

  ForwardParams forward_params() {
    RoutingList routing_input;
    if (config.routing == RoutingKind::general)
      routing_input = {int64_t(input_token.size()), input_token.data(), input_expert.data(), input_scores.data()};
    return ForwardParams{.config = config,
                         .x = x.data(),
                         .router_weight = router(),
                         .experts = experts(),
                         .routing_input = routing_input,
                         .out = out.data(),
                         .saved = saved()};
  }
  BackwardParams backward_params() {
    const bool router_grads = config.routing != RoutingKind::general;
    return BackwardParams{
        .config = config,
        .x = x.data(),
        .router_weight = router(),
        .experts = experts(),
        .saved = saved(),
        .grad_out = grad_out.data(),
        .grad_x = grad_x.data(),
        .grad_w1 = grad_w1.data(),
        .grad_b1 = grad_b1.data(),
        .grad_w2 = grad_w2.data(),
        .grad_b2 = grad_b2.data(),
        .grad_router_weight = router_grads ? grad_wr.data() : nullptr,
        .grad_scores = grad_scores.data(),
    };
  }

  Status forward(const Options& o = {}) {
    out.poison();
    h.poison();
    return moe_forward(forward_params(), o);
  }
  Status backward(const Options& o = {}) {
    poison_grads();
    return moe_backward(backward_params(), o);
  }
  Status backward_naive() {
    poison_grads();
    return moe_backward_naive(backward_params());
  }
  void poison_grads() {
    for (Buffer* b : {&grad_x, &grad_wr, &grad_w1, &grad_b1, &grad_w2, &grad_b2}) b->poison();
    std::fill(grad_scores.begin(), grad_scores.end(), std::nanf(""));
  }
  // Σ grad_out ⊙ out: the scalar whose gradient the backward computes.
  double loss() const {
    double acc = 0;
    for (int64_t i = 0; i < T * d; ++i) acc += grad_out.at(i) * out.at(i);
    return acc;
  }
};

}  // namespace sonicmoe::reference
