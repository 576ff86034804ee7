// src/moe/moe_layer.cu — forward and backward orchestration of the GPU MoE layer (DESIGN.md §4)
// and its workspace. The kernels live elsewhere (src/routing, src/gemm, src/combine); this file
// only decides what runs in which order, on which buffers, and what outlives the forward.
//
// Memory contract (DESIGN.md §3): the forward writes into the caller's SavedState exactly the
// routing list, its metadata and H; A, Y and the logits are workspace and dead when it returns.
#include <cuda_runtime_api.h>

#include <string>

#include "combine/combine.h"
#include "core/device_checks.h"
#include "core/validate.h"
#include "moe/router_gemm.h"
#include "moe/workspace.h"
#include "routing/router_backward.h"
#include "sonicmoe/gpu_layer.h"
#include "sonicmoe/gpu_routing.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {
namespace moe {
namespace {

using detail::concat;

using detail::cuda_status;

bool uses_router(const LayerConfig& c) { return c.routing != RoutingKind::general; }

// What the GPU layer supports beyond the rules every backend shares.
Status check_gpu_config(const LayerConfig& c) {
  if (c.dtype != DType::bfloat16)
    return Status::unsupported("dtype", concat("the GPU layer takes bfloat16 tensors (got ", to_string(c.dtype), ")"));
  if (c.activation != Activation::swiglu)
    return Status::unsupported("activation",
                               concat("the GPU layer implements swiglu only (got ", to_string(c.activation), ")"));
  if (uses_router(c) && c.shape.num_experts > 1024)
    return Status::unsupported("shape.num_experts", concat("the GPU router supports at most 1024 experts (got ",
                                                           c.shape.num_experts, ")"));
  if (uses_router(c) && c.shape.top_k > 32)
    return Status::unsupported("shape.top_k", concat("the GPU router supports top_k <= 32 (got ", c.shape.top_k, ")"));
  return Status();
}

Status check_workspace(void* workspace, int64_t bytes, int64_t need) {
  if (need > 0 && !workspace) return Status::invalid_argument("workspace", "must not be null");
  if (reinterpret_cast<uintptr_t>(workspace) % WorkspaceCarver::kAlignment != 0)
    return Status::invalid_argument("workspace", "must be 256-byte aligned (cudaMalloc memory is)");
  if (bytes < need)
    return Status::invalid_argument("workspace_bytes", concat("must be >= ", need, " for this call (got ", bytes, ")"));
  return Status();
}

// ---- workspace layouts ---------------------------------------------------------------------

struct ForwardWorkspace {
  float* logits = nullptr;            // [T, E] router logits
  int64_t* num_routed = nullptr;      // token rounding: the list length on the device
  void* rounding = nullptr;           // token rounding's own workspace
  int64_t rounding_bytes = 0;
  void* metadata = nullptr;           // build_routing_metadata's workspace
  int64_t metadata_bytes = 0;
  RoutingListCheck* check = nullptr;  // general routing: the device-side list check
  CublasWorkspace cublas;
  bfloat16* a = nullptr;              // [capacity, n]  SwiGLU(H), transient
  bfloat16* y = nullptr;              // [capacity, d]  expert outputs, transient
  SavedState transient;               // inference: routing and H for the duration of the call
};

ForwardWorkspace carve_forward(WorkspaceCarver& c, const LayerConfig& config, int64_t capacity, bool inference) {
  const LayerShape& s = config.shape;
  ForwardWorkspace w;
  if (uses_router(config)) w.logits = c.take<float>(s.num_tokens * s.num_experts);
  if (config.routing == RoutingKind::token_rounding) {
    w.num_routed = c.take<int64_t>(1);
    w.rounding_bytes = token_rounding_workspace_bytes(s.num_tokens, s.num_experts, s.top_k);
    w.rounding = c.take<char>(w.rounding_bytes);
  }
  if (config.routing == RoutingKind::general) w.check = c.take<RoutingListCheck>(1);
  w.metadata_bytes = routing_metadata_workspace_bytes(capacity, s.num_experts);
  w.metadata = c.take<char>(w.metadata_bytes);
  w.cublas.bytes = uses_router(config) ? cublas_workspace_bytes() : 0;
  w.cublas.ptr = c.take<char>(w.cublas.bytes);
  w.a = c.take<bfloat16>(capacity * s.intermediate);
  w.y = c.take<bfloat16>(capacity * s.hidden);
  if (inference) {
    w.transient.capacity = capacity;
    w.transient.token_idx = c.take<int32_t>(capacity);
    w.transient.expert_idx = c.take<int32_t>(capacity);
    w.transient.scores = c.take<float>(capacity);
    w.transient.metadata.expert_offsets = c.take<int32_t>(s.num_experts + 1);
    w.transient.metadata.gather_idx = c.take<int32_t>(capacity);
    w.transient.metadata.scatter_idx = c.take<int32_t>(capacity);
    w.transient.metadata.reverse_idx = c.take<int32_t>(capacity);
    w.transient.h = c.take<bfloat16>(capacity * h_cols(config));
  }
  return w;
}

struct BackwardWorkspace {
  bfloat16* grad_h = nullptr;     // [capacity, 2n] dH
  bfloat16* a_scaled = nullptr;   // [capacity, n]  s·A, the dW2 operand
  float* ds_partial = nullptr;    // [capacity, partial cols] per-N-tile dS
  float* grad_scores = nullptr;   // [capacity] dS when the caller does not ask for it
  bfloat16* dx_rows = nullptr;    // [capacity, d] dX̃
  float* logits = nullptr;        // [T, E] token rounding: logits recomputed
  bfloat16* grad_logits = nullptr;  // [T, E]
  CublasWorkspace cublas;
};

BackwardWorkspace carve_backward(WorkspaceCarver& c, const LayerConfig& config, int64_t capacity) {
  const LayerShape& s = config.shape;
  BackwardWorkspace w;
  w.grad_h = c.take<bfloat16>(capacity * h_cols(config));
  w.a_scaled = c.take<bfloat16>(capacity * s.intermediate);
  w.ds_partial = c.take<float>(capacity * down_proj_act_grad_partial_cols(s.intermediate));
  w.grad_scores = c.take<float>(capacity);
  w.dx_rows = c.take<bfloat16>(capacity * s.hidden);
  if (config.routing == RoutingKind::token_rounding) w.logits = c.take<float>(s.num_tokens * s.num_experts);
  if (uses_router(config)) {
    w.grad_logits = c.take<bfloat16>(s.num_tokens * s.num_experts);
    w.cublas.bytes = cublas_workspace_bytes();
    w.cublas.ptr = c.take<char>(w.cublas.bytes);
  }
  return w;
}

// ---- forward steps ---------------------------------------------------------------------------

// Fills saved.{token_idx, expert_idx, scores} and saved.metadata.
Status route(const ForwardParams& p, const SavedState& saved, const ForwardWorkspace& w, cudaStream_t stream) {
  const LayerShape& s = p.config.shape;
  const int64_t capacity = saved.capacity;
  const int64_t* device_num_routed = nullptr;
  if (uses_router(p.config)) {
    SONICMOE_RETURN_IF_ERROR(router_logits({.num_tokens = s.num_tokens,
                                            .hidden = s.hidden,
                                            .num_experts = s.num_experts,
                                            .dtype = p.config.dtype,
                                            .x = p.x,
                                            .router_weight = p.router_weight,
                                            .logits = w.logits},
                                           w.cublas.ptr, w.cublas.bytes, stream));
  }
  switch (p.config.routing) {
    case RoutingKind::top_k:
      SONICMOE_RETURN_IF_ERROR(route_top_k({.num_tokens = s.num_tokens,
                                            .num_experts = s.num_experts,
                                            .top_k = s.top_k,
                                            .logits = w.logits,
                                            .token_idx = saved.token_idx,
                                            .expert_idx = saved.expert_idx,
                                            .scores = saved.scores},
                                           stream));
      break;
    case RoutingKind::token_rounding:
      SONICMOE_RETURN_IF_ERROR(route_token_rounding({.num_tokens = s.num_tokens,
                                                     .num_experts = s.num_experts,
                                                     .top_k = s.top_k,
                                                     .options = p.config.rounding,
                                                     .logits = w.logits,
                                                     .capacity = capacity,
                                                     .token_idx = saved.token_idx,
                                                     .expert_idx = saved.expert_idx,
                                                     .scores = saved.scores,
                                                     .num_routed = w.num_routed},
                                                    w.rounding, w.rounding_bytes, stream));
      device_num_routed = w.num_routed;
      break;
    case RoutingKind::general: {
      const RoutingList& in = p.routing_input;
      if (in.num_routed > 0) {
        if (!in.token_idx || !in.expert_idx || !in.scores)
          return Status::invalid_argument("routing_input", "token_idx, expert_idx and scores must not be null");
        if (p.check_routing_input) {
          SONICMOE_RETURN_IF_ERROR(check_routing_list(in, s.num_tokens, s.num_experts, w.check, stream));
          RoutingListCheck result;
          SONICMOE_RETURN_IF_ERROR(cuda_status(
              cudaMemcpyAsync(&result, w.check, sizeof(result), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync"));
          SONICMOE_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "cudaStreamSynchronize"));
          SONICMOE_RETURN_IF_ERROR(routing_list_status(result, "routing_input"));
        }
        // The saved state owns its copy of the list (the caller may reuse its arrays).
        const size_t n = size_t(in.num_routed);
        SONICMOE_RETURN_IF_ERROR(cuda_status(
            cudaMemcpyAsync(saved.token_idx, in.token_idx, n * 4, cudaMemcpyDeviceToDevice, stream), "copy token_idx"));
        SONICMOE_RETURN_IF_ERROR(cuda_status(
            cudaMemcpyAsync(saved.expert_idx, in.expert_idx, n * 4, cudaMemcpyDeviceToDevice, stream), "copy expert_idx"));
        SONICMOE_RETURN_IF_ERROR(cuda_status(
            cudaMemcpyAsync(saved.scores, in.scores, n * 4, cudaMemcpyDeviceToDevice, stream), "copy scores"));
      }
      break;
    }
  }
  const int64_t listed = p.config.routing == RoutingKind::general ? p.routing_input.num_routed : capacity;
  return build_routing_metadata({.num_tokens = s.num_tokens,
                                 .num_experts = s.num_experts,
                                 .routing = {listed, saved.token_idx, saved.expert_idx, saved.scores},
                                 .metadata = saved.metadata},
                                device_num_routed, w.metadata, w.metadata_bytes, stream);
}

}  // namespace
}  // namespace moe

int64_t routed_capacity(const LayerConfig& config, int64_t general_num_routed) {
  const LayerShape& s = config.shape;
  switch (config.routing) {
    case RoutingKind::top_k: return s.num_tokens * s.top_k;
    case RoutingKind::token_rounding:
      return token_rounding_capacity(s.num_tokens, s.num_experts, s.top_k, config.rounding.tile_m);
    case RoutingKind::general: return general_num_routed;
  }
  return 0;
}

int64_t forward_workspace_bytes(const LayerConfig& config, int64_t capacity, bool inference) {
  moe::WorkspaceCarver measure;
  moe::carve_forward(measure, config, capacity, inference);
  return measure.bytes();
}

int64_t backward_workspace_bytes(const LayerConfig& config, int64_t capacity) {
  moe::WorkspaceCarver measure;
  moe::carve_backward(measure, config, capacity);
  return measure.bytes();
}

Status moe_forward(const ForwardParams& p, void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
  using namespace moe;
  SONICMOE_RETURN_IF_ERROR(detail::validate_forward_params(p));
  SONICMOE_RETURN_IF_ERROR(check_gpu_config(p.config));
  const LayerConfig& c = p.config;
  const LayerShape& s = c.shape;
  const int64_t capacity = routed_capacity(c, p.routing_input.num_routed);
  SONICMOE_RETURN_IF_ERROR(check_workspace(workspace, workspace_bytes, forward_workspace_bytes(c, capacity, p.inference)));
  WorkspaceCarver carver(workspace);
  const ForwardWorkspace w = carve_forward(carver, c, capacity, p.inference);
  SavedState saved = p.inference ? w.transient : p.saved;
  saved.capacity = capacity;  // rows used by this call (the caller's arrays may be longer)

  SONICMOE_RETURN_IF_ERROR(route(p, saved, w, stream));
  const int32_t* offsets = saved.metadata.expert_offsets;
  SONICMOE_RETURN_IF_ERROR(grouped_gemm_up_proj({.x = static_cast<const bfloat16*>(p.x),
                                                 .w1 = static_cast<const bfloat16*>(p.experts.w1),
                                                 .b1 = static_cast<const bfloat16*>(p.experts.b1),
                                                 .expert_offsets = offsets,
                                                 .gather_idx = saved.metadata.gather_idx,
                                                 .h = static_cast<bfloat16*>(saved.h),
                                                 .a = w.a,
                                                 .num_tokens = s.num_tokens,
                                                 .num_rows = capacity,
                                                 .hidden = s.hidden,
                                                 .intermediate = s.intermediate,
                                                 .num_experts = s.num_experts},
                                                stream));
  SONICMOE_RETURN_IF_ERROR(grouped_gemm_down_proj({.a = w.a,
                                                   .w2 = static_cast<const bfloat16*>(p.experts.w2),
                                                   .b2 = static_cast<const bfloat16*>(p.experts.b2),
                                                   .expert_offsets = offsets,
                                                   .y = w.y,
                                                   .num_rows = capacity,
                                                   .hidden = s.hidden,
                                                   .intermediate = s.intermediate,
                                                   .num_experts = s.num_experts},
                                                  stream));
  return combine::combine_rows({.num_tokens = s.num_tokens,
                                .hidden = s.hidden,
                                .capacity = capacity,
                                .top_k = c.routing == RoutingKind::top_k ? s.top_k : 0,
                                .num_routed = offsets + s.num_experts,
                                .token_idx = saved.token_idx,
                                .reverse_idx = saved.metadata.reverse_idx,
                                .scores = saved.scores,
                                .rows = w.y,
                                .out = static_cast<bfloat16*>(p.out)},
                               stream);
}

Status moe_backward(const BackwardParams& p, void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
  using namespace moe;
  SONICMOE_RETURN_IF_ERROR(detail::validate_backward_params(p));
  SONICMOE_RETURN_IF_ERROR(check_gpu_config(p.config));
  const LayerConfig& c = p.config;
  const LayerShape& s = c.shape;
  const SavedState& saved = p.saved;
  const int64_t capacity = saved.capacity;
  SONICMOE_RETURN_IF_ERROR(check_workspace(workspace, workspace_bytes, backward_workspace_bytes(c, capacity)));
  WorkspaceCarver carver(workspace);
  const BackwardWorkspace w = carve_backward(carver, c, capacity);
  const int32_t* offsets = saved.metadata.expert_offsets;
  const int32_t* num_routed = offsets + s.num_experts;
  const auto* grad_out = static_cast<const bfloat16*>(p.grad_out);
  const auto* x = static_cast<const bfloat16*>(p.x);
  float* grad_scores = p.grad_scores ? p.grad_scores : w.grad_scores;

  // dA' = dO·W2 with dS partials, dH and s·A in its epilogue.
  SONICMOE_RETURN_IF_ERROR(grouped_gemm_down_proj_act_grad({.grad_out = grad_out,
                                                            .w2 = static_cast<const bfloat16*>(p.experts.w2),
                                                            .h = static_cast<const bfloat16*>(saved.h),
                                                            .scores = saved.scores,
                                                            .expert_offsets = offsets,
                                                            .gather_idx = saved.metadata.gather_idx,
                                                            .scatter_idx = saved.metadata.scatter_idx,
                                                            .grad_h = w.grad_h,
                                                            .a_scaled = w.a_scaled,
                                                            .ds_partial = w.ds_partial,
                                                            .num_tokens = s.num_tokens,
                                                            .num_rows = capacity,
                                                            .hidden = s.hidden,
                                                            .intermediate = s.intermediate,
                                                            .num_experts = s.num_experts},
                                                           stream));
  SONICMOE_RETURN_IF_ERROR(combine::finish_score_grad({.capacity = capacity,
                                                       .partial_cols = down_proj_act_grad_partial_cols(s.intermediate),
                                                       .hidden = s.hidden,
                                                       .num_tokens = s.num_tokens,
                                                       .num_experts = s.num_experts,
                                                       .num_routed = num_routed,
                                                       .partial = w.ds_partial,
                                                       .token_idx = saved.token_idx,
                                                       .expert_idx = saved.expert_idx,
                                                       .grad_out = grad_out,
                                                       .b2 = static_cast<const bfloat16*>(p.experts.b2),
                                                       .grad_scores = grad_scores},
                                                      stream));
  SONICMOE_RETURN_IF_ERROR(grouped_gemm_down_proj_weight_grad({.grad_out = grad_out,
                                                               .a_scaled = w.a_scaled,
                                                               .expert_offsets = offsets,
                                                               .gather_idx = saved.metadata.gather_idx,
                                                               .grad_w2 = static_cast<bfloat16*>(p.grad_w2),
                                                               .num_tokens = s.num_tokens,
                                                               .num_rows = capacity,
                                                               .hidden = s.hidden,
                                                               .intermediate = s.intermediate,
                                                               .num_experts = s.num_experts},
                                                              stream));
  SONICMOE_RETURN_IF_ERROR(grouped_gemm_up_proj_input_grad({.dh = w.grad_h,
                                                            .w1 = static_cast<const bfloat16*>(p.experts.w1),
                                                            .expert_offsets = offsets,
                                                            .dx_rows = w.dx_rows,
                                                            .num_rows = capacity,
                                                            .hidden = s.hidden,
                                                            .intermediate = s.intermediate,
                                                            .num_experts = s.num_experts},
                                                           stream));
  SONICMOE_RETURN_IF_ERROR(grouped_gemm_up_proj_weight_grad({.grad_h = w.grad_h,
                                                             .x = x,
                                                             .expert_offsets = offsets,
                                                             .gather_idx = saved.metadata.gather_idx,
                                                             .grad_w1 = static_cast<bfloat16*>(p.grad_w1),
                                                             .num_tokens = s.num_tokens,
                                                             .num_rows = capacity,
                                                             .hidden = s.hidden,
                                                             .h_cols = h_cols(c),
                                                             .num_experts = s.num_experts},
                                                            stream));
  SONICMOE_RETURN_IF_ERROR(combine::combine_rows({.num_tokens = s.num_tokens,
                                                  .hidden = s.hidden,
                                                  .capacity = capacity,
                                                  .top_k = c.routing == RoutingKind::top_k ? s.top_k : 0,
                                                  .num_routed = num_routed,
                                                  .token_idx = saved.token_idx,
                                                  .reverse_idx = saved.metadata.reverse_idx,
                                                  .scores = nullptr,
                                                  .rows = w.dx_rows,
                                                  .out = static_cast<bfloat16*>(p.grad_x)},
                                                 stream));
  if (c.has_bias) {
    // db2_e = Σ over e's rows of s·dO[token]; db1_e = Σ over e's rows of dH.
    SONICMOE_RETURN_IF_ERROR(combine::expert_column_sums({.num_experts = s.num_experts,
                                                          .cols = s.hidden,
                                                          .src_rows = s.num_tokens,
                                                          .capacity = capacity,
                                                          .expert_offsets = offsets,
                                                          .gather_idx = saved.metadata.gather_idx,
                                                          .scatter_idx = saved.metadata.scatter_idx,
                                                          .row_scale = saved.scores,
                                                          .src = grad_out,
                                                          .out = static_cast<bfloat16*>(p.grad_b2)},
                                                         stream));
    SONICMOE_RETURN_IF_ERROR(combine::expert_column_sums({.num_experts = s.num_experts,
                                                          .cols = h_cols(c),
                                                          .src_rows = capacity,
                                                          .capacity = capacity,
                                                          .expert_offsets = offsets,
                                                          .src = w.grad_h,
                                                          .out = static_cast<bfloat16*>(p.grad_b1)},
                                                         stream));
  }
  if (!uses_router(c)) return Status();

  // Router: dS -> dlogits (softmax backward), dWr = dlogitsᵀ·x, grad_x += dlogits·Wr.
  if (c.routing == RoutingKind::token_rounding)
    SONICMOE_RETURN_IF_ERROR(router_logits({.num_tokens = s.num_tokens,
                                            .hidden = s.hidden,
                                            .num_experts = s.num_experts,
                                            .dtype = c.dtype,
                                            .x = p.x,
                                            .router_weight = p.router_weight,
                                            .logits = w.logits},
                                           w.cublas.ptr, w.cublas.bytes, stream));
  SONICMOE_RETURN_IF_ERROR(routing::router_backward({.num_tokens = s.num_tokens,
                                                     .num_experts = s.num_experts,
                                                     .top_k = s.top_k,
                                                     .kind = c.routing,
                                                     .capacity = capacity,
                                                     .num_routed = num_routed,
                                                     .token_idx = saved.token_idx,
                                                     .expert_idx = saved.expert_idx,
                                                     .scores = saved.scores,
                                                     .grad_scores = grad_scores,
                                                     .logits = w.logits,
                                                     .grad_logits = w.grad_logits},
                                                    stream));
  const auto* router_weight = static_cast<const bfloat16*>(p.router_weight);
  SONICMOE_RETURN_IF_ERROR(router_weight_grad(w.grad_logits, x, static_cast<bfloat16*>(p.grad_router_weight),
                                              s.num_tokens, s.hidden, s.num_experts, w.cublas, stream));
  return router_input_grad_accumulate(w.grad_logits, router_weight, static_cast<bfloat16*>(p.grad_x), s.num_tokens,
                                      s.hidden, s.num_experts, w.cublas, stream);
}

}  // namespace sonicmoe
