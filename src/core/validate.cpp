// The rules every entry point enforces before touching data. Messages name the argument and
// the rule, with the values seen, so a user can fix the call without reading our code.
#include "core/validate.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sonicmoe {

using detail::concat;

namespace {

constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

Status check_positive(int64_t value, const char* name) {
  if (value <= 0) return Status::invalid_argument(name, concat("must be > 0 (got ", value, ")"));
  return {};
}

// Router and routing functions see (T, E, K) without a LayerConfig.
Status check_routing_sizes(int64_t num_tokens, int64_t num_experts, int64_t top_k) {
  SONICMOE_RETURN_IF_ERROR(check_positive(num_tokens, "num_tokens"));
  SONICMOE_RETURN_IF_ERROR(check_positive(num_experts, "num_experts"));
  SONICMOE_RETURN_IF_ERROR(check_positive(top_k, "top_k"));
  if (top_k > num_experts)
    return Status::invalid_argument(
        "top_k", concat("must be <= num_experts (got top_k=", top_k, ", num_experts=", num_experts, ")"));
  if (num_tokens * top_k > kMaxInt32)
    return Status::invalid_argument(
        "num_tokens", concat("num_tokens * top_k must fit in int32 routing indices (got ",
                             num_tokens, " * ", top_k, ")"));
  return {};
}

bool valid_dtype(DType t) {
  return t == DType::bfloat16 || t == DType::float32 || t == DType::float64;
}

}  // namespace

int64_t token_rounding_capacity(int64_t num_tokens, int64_t num_experts, int64_t top_k, int64_t tile_m) {
  if (num_tokens <= 0 || num_experts <= 0 || top_k <= 0 || tile_m <= 0) return 0;
  const int64_t rounded_up = num_tokens * top_k + num_experts * (tile_m - 1);
  const int64_t every_pair = num_tokens * num_experts;
  return rounded_up < every_pair ? rounded_up : every_pair;
}

int64_t saved_state_bytes(const LayerConfig& config, int64_t num_routed) {
  const int64_t element = dtype_size(config.dtype);
  const int64_t x_bytes = config.shape.num_tokens * config.shape.hidden * element;
  const int64_t h_bytes = num_routed * h_cols(config) * element;
  const int64_t scores_bytes = num_routed * 4;
  // token_idx, expert_idx, gather, scatter, reverse: int32 [TK]; expert_offsets int32 [E+1].
  const int64_t routing_bytes = 5 * num_routed * 4 + (config.shape.num_experts + 1) * 4;
  return x_bytes + h_bytes + scores_bytes + routing_bytes;
}

Status validate_layer_config(const LayerConfig& config) {
  const LayerShape& s = config.shape;
  SONICMOE_RETURN_IF_ERROR(check_positive(s.num_tokens, "shape.num_tokens"));
  SONICMOE_RETURN_IF_ERROR(check_positive(s.hidden, "shape.hidden"));
  SONICMOE_RETURN_IF_ERROR(check_positive(s.intermediate, "shape.intermediate"));
  SONICMOE_RETURN_IF_ERROR(check_positive(s.num_experts, "shape.num_experts"));
  SONICMOE_RETURN_IF_ERROR(check_positive(s.top_k, "shape.top_k"));
  if (s.top_k > s.num_experts)
    return Status::invalid_argument("shape.top_k", concat("must be <= shape.num_experts (got top_k=", s.top_k,
                                                          ", num_experts=", s.num_experts, ")"));
  // Rows of x, W1, W2, H, A and Y must start on 16 bytes for TMA and 16-byte cp.async at bf16.
  if (s.hidden % 8 != 0)
    return Status::invalid_argument(
        "shape.hidden", concat("must be a multiple of 8 so that bf16 rows are 16-byte aligned (got ", s.hidden, ")"));
  if (s.intermediate % 8 != 0)
    return Status::invalid_argument(
        "shape.intermediate",
        concat("must be a multiple of 8 so that bf16 rows are 16-byte aligned (got ", s.intermediate, ")"));
  if (s.num_experts > kMaxInt32 - 1)
    return Status::invalid_argument("shape.num_experts", concat("must fit int32 expert indices (got ", s.num_experts, ")"));
  if (s.num_tokens * s.top_k > kMaxInt32)
    return Status::invalid_argument(
        "shape.num_tokens", concat("num_tokens * top_k must fit in int32 routing indices (got ", s.num_tokens,
                                   " * ", s.top_k, ")"));
  if (!valid_dtype(config.dtype))
    return Status::invalid_argument("dtype", concat("must be bfloat16, float32 or float64 (got code ", int(config.dtype), ")"));
  if (config.activation != Activation::swiglu && config.activation != Activation::relu_squared &&
      config.activation != Activation::gelu_tanh)
    return Status::invalid_argument("activation", concat("unknown activation code ", int(config.activation)));
  if (config.routing != RoutingKind::top_k && config.routing != RoutingKind::token_rounding &&
      config.routing != RoutingKind::general)
    return Status::invalid_argument("routing", concat("unknown routing kind code ", int(config.routing)));
  if (config.routing == RoutingKind::token_rounding) {
    SONICMOE_RETURN_IF_ERROR(check_positive(config.rounding.tile_m, "rounding.tile_m"));
    const RoundingMode m = config.rounding.mode;
    if (m != RoundingMode::nearest && m != RoundingMode::up && m != RoundingMode::down)
      return Status::invalid_argument("rounding.mode", concat("unknown rounding mode code ", int(m)));
    if (token_rounding_capacity(s.num_tokens, s.num_experts, s.top_k, config.rounding.tile_m) > kMaxInt32)
      return Status::invalid_argument("rounding.tile_m", "the largest token-rounding output must fit int32 indices");
  }
  return {};
}

Status validate_routing_list(const RoutingList& routing, int64_t num_tokens, int64_t num_experts, const char* name) {
  const std::string base(name);
  if (routing.num_routed < 0)
    return Status::invalid_argument(base + ".num_routed", concat("must be >= 0 (got ", routing.num_routed, ")"));
  if (routing.num_routed > kMaxInt32)
    return Status::invalid_argument(base + ".num_routed", concat("must fit int32 (got ", routing.num_routed, ")"));
  if (routing.num_routed == 0) return {};
  if (!routing.token_idx) return Status::invalid_argument(base + ".token_idx", "must not be null");
  if (!routing.expert_idx) return Status::invalid_argument(base + ".expert_idx", "must not be null");
  if (!routing.scores) return Status::invalid_argument(base + ".scores", "must not be null");

  // stamp[e] == token + 1 when token already sent a row to expert e: duplicate detection in O(TK).
  std::vector<int64_t> stamp(static_cast<size_t>(num_experts), -1);
  int64_t previous_token = -1;
  for (int64_t i = 0; i < routing.num_routed; ++i) {
    const int64_t t = routing.token_idx[i];
    const int64_t e = routing.expert_idx[i];
    if (t < 0 || t >= num_tokens)
      return Status::invalid_argument(base + ".token_idx",
                                      concat("entry ", i, " is ", t, ", outside [0, num_tokens=", num_tokens, ")"));
    if (t < previous_token)
      return Status::invalid_argument(
          base + ".token_idx", concat("must be sorted by token (non-decreasing): entry ", i, " is ", t,
                                      " after ", previous_token));
    if (e < 0 || e >= num_experts)
      return Status::invalid_argument(base + ".expert_idx",
                                      concat("entry ", i, " is ", e, ", outside [0, num_experts=", num_experts, ")"));
    if (stamp[size_t(e)] == t)
      return Status::invalid_argument(
          base + ".expert_idx", concat("token ", t, " is routed to expert ", e, " twice (entry ", i, ")"));
    stamp[size_t(e)] = t;
    if (!std::isfinite(routing.scores[i]))
      return Status::invalid_argument(base + ".scores", concat("entry ", i, " is not finite"));
    previous_token = t;
  }
  return {};
}

namespace detail {

Status check_not_null(const void* pointer, const char* name) {
  if (!pointer) return Status::invalid_argument(name, "must not be null");
  return {};
}

Status validate_router_logits_params(const RouterLogitsParams& p) {
  SONICMOE_RETURN_IF_ERROR(check_positive(p.num_tokens, "num_tokens"));
  SONICMOE_RETURN_IF_ERROR(check_positive(p.hidden, "hidden"));
  SONICMOE_RETURN_IF_ERROR(check_positive(p.num_experts, "num_experts"));
  if (!valid_dtype(p.dtype)) return Status::invalid_argument("dtype", "must be bfloat16, float32 or float64");
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.x, "x"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.router_weight, "router_weight"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.logits, "logits"));
  return {};
}

Status validate_top_k_params(const TopKParams& p) {
  SONICMOE_RETURN_IF_ERROR(check_routing_sizes(p.num_tokens, p.num_experts, p.top_k));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.logits, "logits"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.token_idx, "token_idx"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.expert_idx, "expert_idx"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.scores, "scores"));
  return {};
}

Status validate_token_rounding_params(const TokenRoundingParams& p) {
  SONICMOE_RETURN_IF_ERROR(check_routing_sizes(p.num_tokens, p.num_experts, p.top_k));
  SONICMOE_RETURN_IF_ERROR(check_positive(p.options.tile_m, "options.tile_m"));
  const RoundingMode m = p.options.mode;
  if (m != RoundingMode::nearest && m != RoundingMode::up && m != RoundingMode::down)
    return Status::invalid_argument("options.mode", concat("unknown rounding mode code ", int(m)));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.logits, "logits"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.token_idx, "token_idx"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.expert_idx, "expert_idx"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.scores, "scores"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.num_routed, "num_routed"));
  const int64_t need = token_rounding_capacity(p.num_tokens, p.num_experts, p.top_k, p.options.tile_m);
  if (need > kMaxInt32)
    return Status::invalid_argument("options.tile_m", "the largest token-rounding output must fit int32 indices");
  if (p.capacity < need)
    return Status::invalid_argument(
        "capacity", concat("must be >= token_rounding_capacity(T, E, K, tile_m) = ", need, " (got ", p.capacity, ")"));
  return {};
}

Status validate_metadata_params(const RoutingMetadataParams& p) {
  SONICMOE_RETURN_IF_ERROR(check_positive(p.num_tokens, "num_tokens"));
  SONICMOE_RETURN_IF_ERROR(check_positive(p.num_experts, "num_experts"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.metadata.expert_offsets, "metadata.expert_offsets"));
  SONICMOE_RETURN_IF_ERROR(validate_routing_list(p.routing, p.num_tokens, p.num_experts, "routing"));
  if (p.routing.num_routed > 0) {
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.metadata.gather_idx, "metadata.gather_idx"));
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.metadata.scatter_idx, "metadata.scatter_idx"));
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.metadata.reverse_idx, "metadata.reverse_idx"));
  }
  return {};
}

int64_t forward_routed_capacity(const ForwardParams& p) {
  const LayerShape& s = p.config.shape;
  switch (p.config.routing) {
    case RoutingKind::top_k: return s.num_tokens * s.top_k;
    case RoutingKind::token_rounding:
      return token_rounding_capacity(s.num_tokens, s.num_experts, s.top_k, p.config.rounding.tile_m);
    case RoutingKind::general: return p.routing_input.num_routed;
  }
  return 0;
}

namespace {

Status validate_expert_weights(const LayerConfig& config, const ExpertWeights& w, const char* prefix) {
  const std::string base(prefix);
  if (!w.w1) return Status::invalid_argument(base + ".w1", "must not be null");
  if (!w.w2) return Status::invalid_argument(base + ".w2", "must not be null");
  if (config.has_bias) {
    if (!w.b1) return Status::invalid_argument(base + ".b1", "must not be null when config.has_bias is true");
    if (!w.b2) return Status::invalid_argument(base + ".b2", "must not be null when config.has_bias is true");
  } else {
    // A bias passed with has_bias=false would be silently ignored: refuse it instead.
    if (w.b1) return Status::invalid_argument(base + ".b1", "must be null when config.has_bias is false");
    if (w.b2) return Status::invalid_argument(base + ".b2", "must be null when config.has_bias is false");
  }
  return {};
}

Status validate_saved_arrays(const SavedState& saved, const char* prefix) {
  const std::string base(prefix);
  if (!saved.metadata.expert_offsets)
    return Status::invalid_argument(base + ".metadata.expert_offsets", "must not be null");
  if (saved.capacity == 0) return {};
  if (!saved.token_idx) return Status::invalid_argument(base + ".token_idx", "must not be null");
  if (!saved.expert_idx) return Status::invalid_argument(base + ".expert_idx", "must not be null");
  if (!saved.scores) return Status::invalid_argument(base + ".scores", "must not be null");
  if (!saved.metadata.gather_idx) return Status::invalid_argument(base + ".metadata.gather_idx", "must not be null");
  if (!saved.metadata.scatter_idx) return Status::invalid_argument(base + ".metadata.scatter_idx", "must not be null");
  if (!saved.metadata.reverse_idx) return Status::invalid_argument(base + ".metadata.reverse_idx", "must not be null");
  if (!saved.h) return Status::invalid_argument(base + ".h", "must not be null");
  return {};
}

}  // namespace

Status validate_forward_params(const ForwardParams& p) {
  SONICMOE_RETURN_IF_ERROR(validate_layer_config(p.config));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.x, "x"));
  SONICMOE_RETURN_IF_ERROR(validate_expert_weights(p.config, p.experts, "experts"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.out, "out"));
  if (p.config.routing == RoutingKind::general) {
    if (p.router_weight)
      return Status::invalid_argument("router_weight", "must be null for general routing (the caller routes)");
    if (p.routing_input.num_routed < 0 || p.routing_input.num_routed > kMaxInt32)
      return Status::invalid_argument("routing_input.num_routed",
                                      concat("must be in [0, 2^31) (got ", p.routing_input.num_routed, ")"));
  } else {
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.router_weight, "router_weight"));
    if (p.routing_input.num_routed != 0 || p.routing_input.token_idx || p.routing_input.expert_idx ||
        p.routing_input.scores)
      return Status::invalid_argument("routing_input",
                                      concat("must be empty unless config.routing is general (got routing=",
                                             to_string(p.config.routing), ")"));
  }
  if (p.inference) {
    const SavedState& s = p.saved;
    if (s.capacity != 0 || s.token_idx || s.expert_idx || s.scores || s.h || s.metadata.expert_offsets ||
        s.metadata.gather_idx || s.metadata.scatter_idx || s.metadata.reverse_idx)
      return Status::invalid_argument("saved", "must be empty (capacity 0, null pointers) for an inference forward");
    return {};
  }
  if (p.saved.capacity < 0)
    return Status::invalid_argument("saved.capacity", concat("must be >= 0 (got ", p.saved.capacity, ")"));
  const int64_t need = forward_routed_capacity(p);
  if (p.saved.capacity < need)
    return Status::invalid_argument(
        "saved.capacity", concat("must hold every routed row: need ", need, " for ", to_string(p.config.routing),
                                 " routing (got ", p.saved.capacity, ")"));
  SONICMOE_RETURN_IF_ERROR(validate_saved_arrays(p.saved, "saved"));
  return {};
}

Status validate_backward_params(const BackwardParams& p) {
  SONICMOE_RETURN_IF_ERROR(validate_layer_config(p.config));
  const LayerShape& s = p.config.shape;
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.x, "x"));
  SONICMOE_RETURN_IF_ERROR(validate_expert_weights(p.config, p.experts, "experts"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_out, "grad_out"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_x, "grad_x"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_w1, "grad_w1"));
  SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_w2, "grad_w2"));
  if (p.config.has_bias) {
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_b1, "grad_b1"));
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_b2, "grad_b2"));
  } else if (p.grad_b1 || p.grad_b2) {
    return Status::invalid_argument(p.grad_b1 ? "grad_b1" : "grad_b2", "must be null when config.has_bias is false");
  }
  if (p.config.routing == RoutingKind::general) {
    if (p.router_weight) return Status::invalid_argument("router_weight", "must be null for general routing");
    if (p.grad_router_weight)
      return Status::invalid_argument("grad_router_weight", "must be null for general routing (no router)");
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_scores, "grad_scores"));
  } else {
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.router_weight, "router_weight"));
    SONICMOE_RETURN_IF_ERROR(check_not_null(p.grad_router_weight, "grad_router_weight"));
  }
  const SavedState& saved = p.saved;
  if (saved.capacity < 0)
    return Status::invalid_argument("saved.capacity", concat("must be >= 0 (got ", saved.capacity, ")"));
  if (p.config.routing == RoutingKind::top_k && saved.capacity < s.num_tokens * s.top_k)
    return Status::invalid_argument("saved.capacity", concat("must be >= num_tokens * top_k = ", s.num_tokens * s.top_k,
                                                             " for top_k routing (got ", saved.capacity, ")"));
  return validate_saved_arrays(saved, "saved");
}

}  // namespace detail
}  // namespace sonicmoe
