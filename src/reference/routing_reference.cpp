// CPU reference of routing: router logits, top-K softmax, token rounding, routing metadata, and
// the router's backward (score gradients -> logit gradients).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/validate.h"
#include "reference/reference_internal.h"
#include "sonicmoe/reference.h"

namespace sonicmoe::reference {
namespace detail {

using sonicmoe::detail::concat;

std::vector<double> router_logits_double(const void* x, const void* router_weight, DType dtype, int64_t num_tokens,
                                         int64_t hidden, int64_t num_experts) {
  const std::vector<double> xs = load(x, dtype, num_tokens * hidden);
  const std::vector<double> wr = load(router_weight, dtype, num_experts * hidden);
  std::vector<double> logits(static_cast<size_t>(num_tokens * num_experts));
  for (int64_t t = 0; t < num_tokens; ++t)
    for (int64_t e = 0; e < num_experts; ++e) {
      double acc = 0;
      for (int64_t k = 0; k < hidden; ++k) acc += xs[size_t(t * hidden + k)] * wr[size_t(e * hidden + k)];
      logits[size_t(t * num_experts + e)] = acc;
    }
  return logits;
}

namespace {

// Experts of one token ordered by descending logit, ties by ascending expert index.
std::vector<int32_t> experts_by_logit(const double* row, int64_t num_experts) {
  std::vector<int32_t> order(static_cast<size_t>(num_experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
  return order;
}

// Softmax of row[experts[0..count)] in double.
std::vector<double> softmax_over(const double* row, const int32_t* experts, int64_t count) {
  double top = -INFINITY;
  for (int64_t i = 0; i < count; ++i) top = std::max(top, row[experts[i]]);
  std::vector<double> p(static_cast<size_t>(count));
  double sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += (p[size_t(i)] = std::exp(row[experts[i]] - top));
  for (double& v : p) v /= sum;
  return p;
}

std::vector<double> full_softmax(const double* row, int64_t num_experts) {
  std::vector<int32_t> all(static_cast<size_t>(num_experts));
  std::iota(all.begin(), all.end(), 0);
  return softmax_over(row, all.data(), num_experts);
}

}  // namespace

std::vector<RouteEntry> top_k_entries(const double* logits, int64_t num_tokens, int64_t num_experts, int64_t top_k) {
  std::vector<RouteEntry> entries;
  entries.reserve(static_cast<size_t>(num_tokens * top_k));
  for (int64_t t = 0; t < num_tokens; ++t) {
    const double* row = logits + t * num_experts;
    const std::vector<int32_t> order = experts_by_logit(row, num_experts);
    const std::vector<double> scores = softmax_over(row, order.data(), top_k);
    for (int64_t k = 0; k < top_k; ++k) entries.push_back({int32_t(t), order[size_t(k)], scores[size_t(k)]});
  }
  return entries;
}

std::vector<RouteEntry> token_rounding_entries(const double* logits, int64_t num_tokens, int64_t num_experts,
                                               int64_t top_k, const TokenRoundingOptions& options) {
  const int64_t T = num_tokens, E = num_experts, M = options.tile_m;
  // chosen[t*E+e] and score[t*E+e]: the routing as it evolves from top-K to rounded.
  std::vector<char> chosen(static_cast<size_t>(T * E), 0);
  std::vector<double> score(static_cast<size_t>(T * E), 0.0);
  for (const RouteEntry& r : top_k_entries(logits, T, E, top_k)) {
    chosen[size_t(r.token * E + r.expert)] = 1;
    score[size_t(r.token * E + r.expert)] = r.score;
  }
  std::vector<double> probability(static_cast<size_t>(T * E));  // full softmax over E
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<double> p = full_softmax(logits + t * E, E);
    std::copy(p.begin(), p.end(), probability.begin() + t * E);
  }

  for (int64_t e = 0; e < E; ++e) {
    std::vector<int32_t> members, others;
    for (int64_t t = 0; t < T; ++t) (chosen[size_t(t * E + e)] ? members : others).push_back(int32_t(t));
    const int64_t count = int64_t(members.size());
    const int64_t over = count % M;  // tokens past the last full tile
    if (over == 0) continue;
    const int64_t missing = M - over;  // tokens that would complete the tile
    bool pad = options.mode == RoundingMode::up ||
               (options.mode == RoundingMode::nearest && missing < over);  // a tie drops
    if (pad && int64_t(others.size()) < missing) pad = false;  // not enough tokens to pad: drop
    if (pad) {
      // Highest full-softmax probability first; ties: lower token first.
      std::stable_sort(others.begin(), others.end(), [&](int32_t a, int32_t b) {
        return probability[size_t(a * E + e)] > probability[size_t(b * E + e)];
      });
      for (int64_t i = 0; i < missing; ++i) {
        const int32_t t = others[size_t(i)];
        chosen[size_t(t * E + e)] = 1;
        score[size_t(t * E + e)] = probability[size_t(t * E + e)];
      }
    } else {
      // Lowest top-K score first; ties: higher token first (members are in ascending order, so
      // reversing before a stable sort puts the higher token first among equals).
      std::reverse(members.begin(), members.end());
      std::stable_sort(members.begin(), members.end(), [&](int32_t a, int32_t b) {
        return score[size_t(a * E + e)] < score[size_t(b * E + e)];
      });
      for (int64_t i = 0; i < over; ++i) chosen[size_t(members[size_t(i)] * E + e)] = 0;
    }
  }

  std::vector<RouteEntry> entries;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      if (chosen[size_t(t * E + e)]) entries.push_back({int32_t(t), int32_t(e), score[size_t(t * E + e)]});
  return entries;
}

std::vector<double> router_scores_backward(const double* logits, int64_t num_tokens, int64_t num_experts,
                                           int64_t top_k, const int32_t* token_idx,
                                           const int32_t* expert_idx, const double* grad_scores,
                                           int64_t num_routed) {
  const int64_t E = num_experts;
  std::vector<double> grad_logits(static_cast<size_t>(num_tokens * E), 0.0);
  std::vector<double> g_topk(static_cast<size_t>(E)), g_padded(static_cast<size_t>(E));
  int64_t i = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const double* row = logits + t * E;
    const std::vector<int32_t> order = experts_by_logit(row, E);
    std::vector<char> in_top_k(static_cast<size_t>(E), 0);
    for (int64_t k = 0; k < top_k; ++k) in_top_k[size_t(order[size_t(k)])] = 1;
    std::fill(g_topk.begin(), g_topk.end(), 0.0);
    std::fill(g_padded.begin(), g_padded.end(), 0.0);
    bool any_padded = false;
    for (; i < num_routed && token_idx[i] == t; ++i) {
      const int32_t e = expert_idx[i];
      if (in_top_k[size_t(e)]) {
        g_topk[size_t(e)] += grad_scores[i];
      } else {
        // Only token rounding adds experts outside the top-K (scored by the full softmax).
        g_padded[size_t(e)] += grad_scores[i];
        any_padded = true;
      }
    }
    double* dl = grad_logits.data() + t * E;
    // Scores renormalised over the top-K set: ds_j/dl_i = s_j (δ_ij − s_i) on that set. Entries
    // dropped by token rounding carry no gradient but still take part in the normalisation.
    const std::vector<double> s = softmax_over(row, order.data(), top_k);
    double weighted = 0;
    for (int64_t k = 0; k < top_k; ++k) weighted += g_topk[size_t(order[size_t(k)])] * s[size_t(k)];
    for (int64_t k = 0; k < top_k; ++k) {
      const int32_t e = order[size_t(k)];
      dl[e] += s[size_t(k)] * (g_topk[size_t(e)] - weighted);
    }
    if (any_padded) {
      const std::vector<double> p = full_softmax(row, E);
      double weighted_p = 0;
      for (int64_t e = 0; e < E; ++e) weighted_p += g_padded[size_t(e)] * p[size_t(e)];
      for (int64_t e = 0; e < E; ++e) dl[e] += p[size_t(e)] * (g_padded[size_t(e)] - weighted_p);
    }
  }
  return grad_logits;
}

LayerRouting route_layer(const LayerConfig& config, const void* x, const void* router_weight,
                         const RoutingList& general_input) {
  const LayerShape& s = config.shape;
  LayerRouting routing;
  if (config.routing == RoutingKind::general) {
    for (int64_t i = 0; i < general_input.num_routed; ++i)
      routing.entries.push_back({general_input.token_idx[i], general_input.expert_idx[i], general_input.scores[i]});
    return routing;
  }
  routing.logits = router_logits_double(x, router_weight, config.dtype, s.num_tokens, s.hidden, s.num_experts);
  routing.entries = config.routing == RoutingKind::top_k
                        ? top_k_entries(routing.logits.data(), s.num_tokens, s.num_experts, s.top_k)
                        : token_rounding_entries(routing.logits.data(), s.num_tokens, s.num_experts, s.top_k,
                                                 config.rounding);
  return routing;
}

}  // namespace detail

using sonicmoe::detail::concat;

Status router_logits(const RouterLogitsParams& p) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_router_logits_params(p));
  const std::vector<double> logits =
      detail::router_logits_double(p.x, p.router_weight, p.dtype, p.num_tokens, p.hidden, p.num_experts);
  for (size_t i = 0; i < logits.size(); ++i) p.logits[i] = float(logits[i]);
  return {};
}

namespace {

Status check_finite_logits(const float* logits, int64_t num_tokens, int64_t num_experts, std::vector<double>& out) {
  out.resize(static_cast<size_t>(num_tokens * num_experts));
  for (int64_t i = 0; i < num_tokens * num_experts; ++i) {
    if (!std::isfinite(logits[i]))
      return Status::invalid_argument("logits", concat("entry (token ", i / num_experts, ", expert ",
                                                       i % num_experts, ") is not finite"));
    out[size_t(i)] = logits[i];
  }
  return {};
}

}  // namespace

Status route_top_k(const TopKParams& p) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_top_k_params(p));
  std::vector<double> logits;
  SONICMOE_RETURN_IF_ERROR(check_finite_logits(p.logits, p.num_tokens, p.num_experts, logits));
  const auto entries = detail::top_k_entries(logits.data(), p.num_tokens, p.num_experts, p.top_k);
  for (size_t i = 0; i < entries.size(); ++i) {
    p.token_idx[i] = entries[i].token;
    p.expert_idx[i] = entries[i].expert;
    p.scores[i] = float(entries[i].score);
  }
  return {};
}

Status route_token_rounding(const TokenRoundingParams& p) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_token_rounding_params(p));
  std::vector<double> logits;
  SONICMOE_RETURN_IF_ERROR(check_finite_logits(p.logits, p.num_tokens, p.num_experts, logits));
  const auto entries = detail::token_rounding_entries(logits.data(), p.num_tokens, p.num_experts, p.top_k, p.options);
  if (int64_t(entries.size()) > p.capacity)
    return Status::error(StatusCode::internal, "token rounding produced more entries than its capacity bound");
  for (size_t i = 0; i < entries.size(); ++i) {
    p.token_idx[i] = entries[i].token;
    p.expert_idx[i] = entries[i].expert;
    p.scores[i] = float(entries[i].score);
  }
  *p.num_routed = int64_t(entries.size());
  return {};
}

Status build_routing_metadata(const RoutingMetadataParams& p) {
  SONICMOE_RETURN_IF_ERROR(sonicmoe::detail::validate_metadata_params(p));
  const int64_t E = p.num_experts, TK = p.routing.num_routed;
  std::vector<int64_t> count(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < TK; ++i) ++count[size_t(p.routing.expert_idx[i])];
  std::vector<int64_t> next(static_cast<size_t>(E));
  p.metadata.expert_offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    next[size_t(e)] = p.metadata.expert_offsets[e];
    p.metadata.expert_offsets[e + 1] = int32_t(p.metadata.expert_offsets[e] + count[size_t(e)]);
  }
  // A stable bucket pass over the flat (token-sorted) list yields grouped order
  // (expert, token, slot) directly.
  for (int64_t i = 0; i < TK; ++i) {
    const int64_t row = next[size_t(p.routing.expert_idx[i])]++;
    p.metadata.gather_idx[row] = p.routing.token_idx[i];
    p.metadata.scatter_idx[row] = int32_t(i);
    p.metadata.reverse_idx[i] = int32_t(row);
  }
  return {};
}

}  // namespace sonicmoe::reference
