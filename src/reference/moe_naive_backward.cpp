// An independent backward of the MoE layer, used only to check reference::moe_backward.
//
// It shares no arithmetic with the production path: per token and per routed entry it
// recomputes H from x (the saved H and the metadata are not read), forms Y, takes dS = <dO, Y>
// directly, and differentiates the router scores through an explicit Jacobian with its own
// top-K selection and softmax.
#include <cmath>
#include <vector>

#include "core/validate.h"
#include "reference/reference_internal.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::reference {
namespace {

using sonicmoe::detail::concat;
using namespace detail;

// The K largest logits by repeated arg-max (lowest index wins a tie).
std::vector<char> top_k_mask(const double* row, int64_t E, int64_t K) {
  std::vector<char> taken(static_cast<size_t>(E), 0);
  for (int64_t k = 0; k < K; ++k) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e)
      if (!taken[size_t(e)] && (best < 0 || row[e] > row[best])) best = e;
    if (best < 0) break;  // K > E cannot pass validation; stay in bounds regardless
    taken[size_t(best)] = 1;
  }
  return taken;
}

// softmax of row restricted to mask (all experts when mask is null); zeros elsewhere.
std::vector<double> masked_softmax(const double* row, int64_t E, const std::vector<char>* mask) {
  std::vector<double> p(static_cast<size_t>(E), 0.0);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e)
    if (!mask || (*mask)[size_t(e)]) sum += (p[size_t(e)] = std::exp(row[e]));
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

Status moe_backward_naive(const BackwardParams& p) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_backward_params(p));
  const LayerConfig& cfg = p.config;
  const int64_t T = cfg.shape.num_tokens, d = cfg.shape.hidden, n = cfg.shape.intermediate,
                E = cfg.shape.num_experts, K = cfg.shape.top_k, hc = h_cols(cfg);
  const DType dt = cfg.dtype;
  const int64_t TK = p.saved.metadata.expert_offsets[E];
  if (TK < 0 || TK > p.saved.capacity)
    return Status::invalid_argument("saved.metadata.expert_offsets", concat("last entry must be in [0, capacity]"));
  SONICMOE_RETURN_IF_ERROR(
      validate_routing_list({TK, p.saved.token_idx, p.saved.expert_idx, p.saved.scores}, T, E, "saved"));

  const std::vector<double> x = load(p.x, dt, T * d), w1 = load(p.experts.w1, dt, E * hc * d),
                            w2 = load(p.experts.w2, dt, E * d * n), dO = load(p.grad_out, dt, T * d);
  std::vector<double> b1, b2, wr, logits;
  if (cfg.has_bias) {
    b1 = load(p.experts.b1, dt, E * hc);
    b2 = load(p.experts.b2, dt, E * d);
  }
  const bool has_router = cfg.routing != RoutingKind::general;
  if (has_router) {
    wr = load(p.router_weight, dt, E * d);
    logits.assign(static_cast<size_t>(T * E), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t k = 0; k < d; ++k) logits[size_t(t * E + e)] += x[size_t(t * d + k)] * wr[size_t(e * d + k)];
  }

  std::vector<double> dx(static_cast<size_t>(T * d), 0.0), dW1(w1.size(), 0.0), dW2(w2.size(), 0.0), db1(b1.size(), 0.0),
      db2(b2.size(), 0.0), dWr(wr.size(), 0.0), dS(static_cast<size_t>(TK), 0.0);
  std::vector<double> h(static_cast<size_t>(hc)), a(static_cast<size_t>(n)), y(static_cast<size_t>(d)), da(static_cast<size_t>(n)), dh(static_cast<size_t>(hc));
  int64_t i = 0;
  for (int64_t t = 0; t < T; ++t) {
    const double* xt = x.data() + t * d;
    const double* dot = dO.data() + t * d;
    std::vector<char> chosen;
    std::vector<double> topk_softmax, full;
    if (has_router) {
      chosen = top_k_mask(logits.data() + t * E, E, K);
      topk_softmax = masked_softmax(logits.data() + t * E, E, &chosen);
      full = masked_softmax(logits.data() + t * E, E, nullptr);
    }
    std::vector<double> dlogits(static_cast<size_t>(E), 0.0);
    for (; i < TK && p.saved.token_idx[i] == t; ++i) {
      const int64_t e = p.saved.expert_idx[i];
      // The entry's score: renormalised top-K softmax if the router chose e, else (token
      // rounding padding) the full softmax probability; the caller's score for general routing.
      const bool padded = has_router && !chosen[size_t(e)];
      const double s = !has_router ? double(p.saved.scores[i]) : padded ? full[size_t(e)] : topk_softmax[size_t(e)];
      const double* W1e = w1.data() + e * hc * d;
      const double* W2e = w2.data() + e * d * n;
      for (int64_t c = 0; c < hc; ++c) {
        double acc = cfg.has_bias ? b1[size_t(e * hc + c)] : 0.0;
        for (int64_t k = 0; k < d; ++k) acc += W1e[c * d + k] * xt[k];
        h[size_t(c)] = acc;
      }
      activation_forward(cfg.activation, h.data(), a.data(), n);
      for (int64_t c = 0; c < d; ++c) {
        double acc = cfg.has_bias ? b2[size_t(e * d + c)] : 0.0;
        for (int64_t j = 0; j < n; ++j) acc += W2e[c * n + j] * a[size_t(j)];
        y[size_t(c)] = acc;
      }
      // out_t += s·y:  dS = <dO_t, y>;  dy = s·dO_t.
      double ds = 0;
      for (int64_t c = 0; c < d; ++c) ds += dot[c] * y[size_t(c)];
      dS[size_t(i)] = ds;
      std::fill(da.begin(), da.end(), 0.0);
      for (int64_t c = 0; c < d; ++c) {
        const double dy = s * dot[c];
        if (cfg.has_bias) db2[size_t(e * d + c)] += dy;
        for (int64_t j = 0; j < n; ++j) {
          dW2[size_t(e * d * n + c * n + j)] += dy * a[size_t(j)];
          da[size_t(j)] += dy * W2e[c * n + j];
        }
      }
      activation_backward(cfg.activation, h.data(), da.data(), dh.data(), n);
      for (int64_t c = 0; c < hc; ++c) {
        if (cfg.has_bias) db1[size_t(e * hc + c)] += dh[size_t(c)];
        for (int64_t k = 0; k < d; ++k) {
          dW1[size_t(e * hc * d + c * d + k)] += dh[size_t(c)] * xt[k];
          dx[size_t(t * d + k)] += dh[size_t(c)] * W1e[c * d + k];
        }
      }
      if (has_router) {
        // dlogits_j += dS · ∂score/∂logit_j through the explicit softmax Jacobian.
        const std::vector<double>& q = padded ? full : topk_softmax;
        for (int64_t j = 0; j < E; ++j) {
          if (!padded && !chosen[size_t(j)]) continue;
          dlogits[size_t(j)] += ds * q[size_t(e)] * ((j == e ? 1.0 : 0.0) - q[size_t(j)]);
        }
      }
    }
    if (has_router)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t k = 0; k < d; ++k) {
          dWr[size_t(e * d + k)] += dlogits[size_t(e)] * xt[k];
          dx[size_t(t * d + k)] += dlogits[size_t(e)] * wr[size_t(e * d + k)];
        }
  }

  store(p.grad_x, dt, dx);
  store(p.grad_w1, dt, dW1);
  store(p.grad_w2, dt, dW2);
  if (cfg.has_bias) {
    store(p.grad_b1, dt, db1);
    store(p.grad_b2, dt, db2);
  }
  if (has_router) store(p.grad_router_weight, dt, dWr);
  if (p.grad_scores)
    for (int64_t j = 0; j < TK; ++j) p.grad_scores[j] = float(dS[size_t(j)]);
  return {};
}

}  // namespace sonicmoe::reference
