// Input validation shared by every backend (CPU reference now, GPU entry points later).
// Each check returns the first rule broken, naming the argument as the caller spelled it.
#pragma once

#include <sstream>
#include <string>

#include "sonicmoe/moe.h"
#include "sonicmoe/routing.h"
#include "sonicmoe/status.h"

namespace sonicmoe::detail {

// "got top_k=9, num_experts=8"-style messages without std::format (g++ 12).
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

Status check_not_null(const void* pointer, const char* name);

Status validate_router_logits_params(const RouterLogitsParams& p);
Status validate_top_k_params(const TopKParams& p);
Status validate_token_rounding_params(const TokenRoundingParams& p);
Status validate_metadata_params(const RoutingMetadataParams& p);  // routing list checked too

// Entries the forward will route: T*K (top_k), token_rounding_capacity (token_rounding) or the
// caller's list length (general).
int64_t forward_routed_capacity(const ForwardParams& p);

// Shapes, options and pointers only: these never read tensor memory, so they serve host and
// device backends alike. Host backends check routing lists with validate_routing_list too.
Status validate_forward_params(const ForwardParams& p);
Status validate_backward_params(const BackwardParams& p);

}  // namespace sonicmoe::detail
