// CPU reference of the MoE layer's forward and of its backward as the GPU computes it
// (DESIGN.md §2): H saved, A recomputed, dS = <dA', A>, no Y in the backward.
#include <cmath>
#include <vector>

#include "core/validate.h"
#include "reference/reference_internal.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::reference {
namespace {

using sonicmoe::detail::concat;
using namespace detail;

// The layer's inputs converted to double once.
struct Layer {
  int64_t T, d, n, E, hc;
  Activation act;
  DType dtype;
  bool bias;
  std::vector<double> x, w1, b1, w2, b2;

  Layer(const LayerConfig& c, const void* x_in, const ExpertWeights& w)
      : T(c.shape.num_tokens), d(c.shape.hidden), n(c.shape.intermediate), E(c.shape.num_experts),
        hc(h_cols(c)), act(c.activation), dtype(c.dtype), bias(c.has_bias) {
    x = load(x_in, dtype, T * d);
    w1 = load(w.w1, dtype, E * hc * d);
    w2 = load(w.w2, dtype, E * d * n);
    if (bias) {
      b1 = load(w.b1, dtype, E * hc);
      b2 = load(w.b2, dtype, E * d);
    }
  }
  const double* x_row(int64_t t) const { return x.data() + t * d; }
  const double* w1_expert(int64_t e) const { return w1.data() + e * hc * d; }  // [hc, d]
  const double* w2_expert(int64_t e) const { return w2.data() + e * d * n; }   // [d, n]
};

// Expert of every grouped row, from the offsets.
std::vector<int32_t> row_experts(const int32_t* offsets, int64_t num_experts) {
  std::vector<int32_t> expert(static_cast<size_t>(offsets[num_experts]));
  for (int64_t e = 0; e < num_experts; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) expert[size_t(r)] = int32_t(e);
  return expert;
}

// Rebuilds the metadata of a routing list and compares it with what the caller passed: the
// backward must not trust index arrays that do not belong to the list.
Status check_saved_metadata(const SavedState& saved, int64_t TK, int64_t T, int64_t E) {
  std::vector<int32_t> offsets(static_cast<size_t>(E + 1)), gather(static_cast<size_t>(TK)), scatter(static_cast<size_t>(TK)), reverse(static_cast<size_t>(TK));
  RoutingMetadataParams rebuild{
      .num_tokens = T,
      .num_experts = E,
      .routing = {TK, saved.token_idx, saved.expert_idx, saved.scores},
      .metadata = {offsets.data(), gather.data(), scatter.data(), reverse.data()},
  };
  SONICMOE_RETURN_IF_ERROR(build_routing_metadata(rebuild));
  for (int64_t e = 0; e <= E; ++e)
    if (offsets[size_t(e)] != saved.metadata.expert_offsets[e])
      return Status::invalid_argument("saved.metadata.expert_offsets",
                                      concat("entry ", e, " does not match the saved routing list"));
  for (int64_t i = 0; i < TK; ++i) {
    if (gather[size_t(i)] != saved.metadata.gather_idx[i])
      return Status::invalid_argument("saved.metadata.gather_idx", concat("row ", i, " does not match the saved routing list"));
    if (scatter[size_t(i)] != saved.metadata.scatter_idx[i])
      return Status::invalid_argument("saved.metadata.scatter_idx", concat("row ", i, " does not match the saved routing list"));
    if (reverse[size_t(i)] != saved.metadata.reverse_idx[i])
      return Status::invalid_argument("saved.metadata.reverse_idx", concat("slot ", i, " does not match the saved routing list"));
  }
  return {};
}

// TK of the saved state: expert_offsets[E], within [0, capacity].
Status saved_num_routed(const BackwardParams& p, int64_t& num_routed) {
  const int64_t E = p.config.shape.num_experts;
  num_routed = p.saved.metadata.expert_offsets[E];
  if (p.saved.metadata.expert_offsets[0] != 0 || num_routed < 0 || num_routed > p.saved.capacity)
    return Status::invalid_argument(
        "saved.metadata.expert_offsets",
        concat("must start at 0 and end within [0, saved.capacity=", p.saved.capacity, "] (got ",
               p.saved.metadata.expert_offsets[0], " .. ", num_routed, ")"));
  if (p.config.routing == RoutingKind::top_k && num_routed != p.config.shape.num_tokens * p.config.shape.top_k)
    return Status::invalid_argument("saved.metadata.expert_offsets",
                                    concat("must end at num_tokens * top_k for top_k routing (got ", num_routed, ")"));
  return {};
}

}  // namespace

// Scores of the saved routing in double. For top-K and token rounding they are recomputed from
// x·Wrᵀ (the saved fp32 scores are their rounding: finite-difference checks in float64 need the
// unrounded function); the router's choice must be the saved one. General routing: the caller's.
static Status saved_scores_double(const LayerConfig& config, const void* x, const void* router_weight,
                           const SavedState& saved, int64_t num_routed, std::vector<double>& logits,
                           std::vector<double>& scores) {
  scores.assign(static_cast<size_t>(num_routed), 0.0);
  if (config.routing == RoutingKind::general) {
    for (int64_t i = 0; i < num_routed; ++i) scores[size_t(i)] = saved.scores[i];
    return {};
  }
  LayerRouting routing = route_layer(config, x, router_weight, RoutingList{});
  if (int64_t(routing.entries.size()) != num_routed)
    return Status::invalid_argument(
        "saved.metadata.expert_offsets",
        concat("the router routes ", routing.entries.size(), " entries for this x and router_weight, the saved state ",
               num_routed));
  for (int64_t i = 0; i < num_routed; ++i) {
    const RouteEntry& r = routing.entries[size_t(i)];
    if (r.token != saved.token_idx[i] || r.expert != saved.expert_idx[i])
      return Status::invalid_argument("saved.expert_idx", concat("entry ", i, " is not the router's choice for this x and router_weight"));
    scores[size_t(i)] = r.score;
  }
  logits = std::move(routing.logits);
  return {};
}

Status moe_forward(const ForwardParams& p, const Options& options) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_forward_params(p));
  if (p.inference)
    return Status::unsupported("inference", "the CPU reference always fills the saved state: pass inference=false");
  const LayerShape& shape = p.config.shape;
  if (p.config.routing == RoutingKind::general)
    SONICMOE_RETURN_IF_ERROR(validate_routing_list(p.routing_input, shape.num_tokens, shape.num_experts, "routing_input"));

  const Layer L(p.config, p.x, p.experts);
  const LayerRouting routing = route_layer(p.config, p.x, p.router_weight, p.routing_input);
  const int64_t TK = int64_t(routing.entries.size());
  if (TK > p.saved.capacity) return Status::error(StatusCode::internal, "routing produced more rows than the capacity bound");

  const SavedState& saved = p.saved;
  for (int64_t i = 0; i < TK; ++i) {
    saved.token_idx[i] = routing.entries[size_t(i)].token;
    saved.expert_idx[i] = routing.entries[size_t(i)].expert;
    saved.scores[i] = float(routing.entries[size_t(i)].score);
  }
  SONICMOE_RETURN_IF_ERROR(build_routing_metadata({
      .num_tokens = L.T,
      .num_experts = L.E,
      .routing = {TK, saved.token_idx, saved.expert_idx, saved.scores},
      .metadata = saved.metadata,
  }));
  const std::vector<int32_t> expert_of = row_experts(saved.metadata.expert_offsets, L.E);

  // Up-projection, activation and down-projection, one grouped row at a time.
  std::vector<double> h(static_cast<size_t>(L.hc)), a(static_cast<size_t>(L.n)), y_rows(static_cast<size_t>(TK * L.d));
  for (int64_t r = 0; r < TK; ++r) {
    const int64_t e = expert_of[size_t(r)], t = saved.metadata.gather_idx[r];
    const double* w1 = L.w1_expert(e);
    for (int64_t c = 0; c < L.hc; ++c) {
      double acc = L.bias ? L.b1[size_t(e * L.hc + c)] : 0.0;
      for (int64_t k = 0; k < L.d; ++k) acc += w1[c * L.d + k] * L.x_row(t)[k];
      h[size_t(c)] = acc;
      store_one(saved.h, L.dtype, r * L.hc + c, acc);
    }
    round_all(h, L.dtype, options.round_transients);  // a plain implementation reads H back
    activation_forward(L.act, h.data(), a.data(), L.n);
    round_all(a, L.dtype, options.round_transients);
    const double* w2 = L.w2_expert(e);
    for (int64_t c = 0; c < L.d; ++c) {
      double acc = L.bias ? L.b2[size_t(e * L.d + c)] : 0.0;
      for (int64_t j = 0; j < L.n; ++j) acc += w2[c * L.n + j] * a[size_t(j)];
      y_rows[size_t(r * L.d + c)] = options.round_transients ? round_to(L.dtype, acc) : acc;
    }
  }

  // Aggregation in flat order: out[t] = Σ over t's entries of score · Y[row].
  std::vector<double> out(static_cast<size_t>(L.T * L.d), 0.0);
  for (int64_t i = 0; i < TK; ++i) {
    const int64_t t = saved.token_idx[i], r = saved.metadata.reverse_idx[i];
    const double s = options.round_transients ? double(saved.scores[i]) : routing.entries[size_t(i)].score;
    for (int64_t c = 0; c < L.d; ++c) out[size_t(t * L.d + c)] += s * y_rows[size_t(r * L.d + c)];
  }
  store(p.out, L.dtype, out);
  return {};
}

Status moe_backward(const BackwardParams& p, const Options& options) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_backward_params(p));
  const LayerShape& shape = p.config.shape;
  const SavedState& saved = p.saved;
  int64_t TK = 0;
  SONICMOE_RETURN_IF_ERROR(saved_num_routed(p, TK));
  SONICMOE_RETURN_IF_ERROR(validate_routing_list({TK, saved.token_idx, saved.expert_idx, saved.scores},
                                                 shape.num_tokens, shape.num_experts, "saved"));
  SONICMOE_RETURN_IF_ERROR(check_saved_metadata(saved, TK, shape.num_tokens, shape.num_experts));

  const Layer L(p.config, p.x, p.experts);
  std::vector<double> logits, scores;
  SONICMOE_RETURN_IF_ERROR(saved_scores_double(p.config, p.x, p.router_weight, saved, TK, logits, scores));
  if (options.round_transients)
    for (int64_t i = 0; i < TK; ++i) scores[size_t(i)] = saved.scores[i];

  const std::vector<double> H = load(saved.h, L.dtype, TK * L.hc);
  const std::vector<double> dO = load(p.grad_out, L.dtype, L.T * L.d);
  const std::vector<int32_t> expert_of = row_experts(saved.metadata.expert_offsets, L.E);

  std::vector<double> dW1(static_cast<size_t>(L.E * L.hc * L.d), 0.0), db1(static_cast<size_t>(L.E * L.hc), 0.0);
  std::vector<double> dW2(static_cast<size_t>(L.E * L.d * L.n), 0.0), db2(static_cast<size_t>(L.E * L.d), 0.0);
  std::vector<double> dS(static_cast<size_t>(TK), 0.0), dx_rows(static_cast<size_t>(TK * L.d), 0.0);
  std::vector<double> a(static_cast<size_t>(L.n)), da(static_cast<size_t>(L.n)), dh(static_cast<size_t>(L.hc));
  for (int64_t r = 0; r < TK; ++r) {
    const int64_t e = expert_of[size_t(r)], t = saved.metadata.gather_idx[r], slot = saved.metadata.scatter_idx[r];
    const double s = scores[size_t(slot)];
    const double* h = H.data() + r * L.hc;
    const double* dout = dO.data() + t * L.d;
    const double* w2 = L.w2_expert(e);
    activation_forward(L.act, h, a.data(), L.n);  // A recomputed from the saved H
    round_all(a, L.dtype, options.round_transients);
    // dA' = dO_t · W2_e  (the unscaled gradient of A)
    for (int64_t j = 0; j < L.n; ++j) {
      double acc = 0;
      for (int64_t c = 0; c < L.d; ++c) acc += dout[c] * w2[c * L.n + j];
      da[size_t(j)] = acc;
    }
    round_all(da, L.dtype, options.round_transients);
    double ds = 0;  // dS = <dA', A> (+ <dO, b2_e>): the score gradient without Y
    for (int64_t j = 0; j < L.n; ++j) ds += da[size_t(j)] * a[size_t(j)];
    if (L.bias)
      for (int64_t c = 0; c < L.d; ++c) ds += dout[c] * L.b2[size_t(e * L.d + c)];
    dS[size_t(slot)] = ds;
    for (double& v : da) v *= s;  // dA = s · dA'
    activation_backward(L.act, h, da.data(), dh.data(), L.n);
    round_all(dh, L.dtype, options.round_transients);
    // dW2_e += dOᵀ · (s·A); db2_e += s · dO
    for (int64_t c = 0; c < L.d; ++c) {
      for (int64_t j = 0; j < L.n; ++j) dW2[size_t((e * L.d + c) * L.n + j)] += dout[c] * s * a[size_t(j)];
      if (L.bias) db2[size_t(e * L.d + c)] += s * dout[c];
    }
    // dW1_e += dHᵀ · x_t; db1_e += dH; dX̃ = dH · W1_e
    const double* w1 = L.w1_expert(e);
    const double* xt = L.x_row(t);
    double* dxr = dx_rows.data() + r * L.d;
    for (int64_t c = 0; c < L.hc; ++c) {
      const double g = dh[size_t(c)];
      for (int64_t k = 0; k < L.d; ++k) {
        dW1[size_t((e * L.hc + c) * L.d + k)] += g * xt[k];
        dxr[k] += g * w1[c * L.d + k];
      }
      if (L.bias) db1[size_t(e * L.hc + c)] += g;
    }
    if (options.round_transients)
      for (int64_t k = 0; k < L.d; ++k) dxr[k] = round_to(L.dtype, dxr[k]);
  }

  // dx[t] = Σ over t's entries of dX̃[row], in flat order.
  std::vector<double> dx(static_cast<size_t>(L.T * L.d), 0.0);
  for (int64_t i = 0; i < TK; ++i) {
    const int64_t t = saved.token_idx[i], r = saved.metadata.reverse_idx[i];
    for (int64_t k = 0; k < L.d; ++k) dx[size_t(t * L.d + k)] += dx_rows[size_t(r * L.d + k)];
  }

  if (p.config.routing != RoutingKind::general) {
    // Router: dlogits from dS (softmax-over-top-K backward), dWr = dlogitsᵀ·x, dx += dlogits·Wr.
    const std::vector<double> dlogits = router_scores_backward(logits.data(), L.T, L.E, shape.top_k, saved.token_idx,
                                                               saved.expert_idx, dS.data(), TK);
    const std::vector<double> wr = load(p.router_weight, L.dtype, L.E * L.d);
    std::vector<double> dWr(static_cast<size_t>(L.E * L.d), 0.0);
    for (int64_t t = 0; t < L.T; ++t)
      for (int64_t e = 0; e < L.E; ++e) {
        const double g = dlogits[size_t(t * L.E + e)];
        if (g == 0.0) continue;
        for (int64_t k = 0; k < L.d; ++k) {
          dWr[size_t(e * L.d + k)] += g * L.x_row(t)[k];
          dx[size_t(t * L.d + k)] += g * wr[size_t(e * L.d + k)];
        }
      }
    store(p.grad_router_weight, L.dtype, dWr);
  }

  store(p.grad_x, L.dtype, dx);
  store(p.grad_w1, L.dtype, dW1);
  store(p.grad_w2, L.dtype, dW2);
  if (L.bias) {
    store(p.grad_b1, L.dtype, db1);
    store(p.grad_b2, L.dtype, db2);
  }
  if (p.grad_scores)
    for (int64_t i = 0; i < TK; ++i) p.grad_scores[i] = float(dS[size_t(i)]);
  return {};
}

}  // namespace sonicmoe::reference
