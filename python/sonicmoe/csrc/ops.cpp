// python/sonicmoe/csrc/ops.cpp — the PyTorch binding of the GPU layer (sonicmoe/gpu_layer.h).
//
// Two custom ops in the `sonicmoe` namespace, registered with TORCH_LIBRARY so that they are
// reached through torch.ops.sonicmoe.* (no pybind11, no Python C API: this library does not
// depend on the Python version, only on libtorch). Each CUDA implementation
//   1. checks every tensor (device, dtype, contiguity, shape, 16-byte alignment) and names the
//      argument that breaks a rule,
//   2. allocates the outputs and the workspace from PyTorch's caching allocator on x's device,
//   3. fills the torch-free parameter structs and calls sonicmoe::moe_forward / moe_backward on
//      the current stream, turning a failed sonicmoe::Status into a Python exception.
// Nothing here synchronises the device. The one exception is the core's check of a general
// routing list (8 bytes read back); it is skipped automatically while the stream is being
// captured into a CUDA graph, and the caller can turn it off (check_routing=False).
//
// Shapes of every output follow from the inputs alone (python/sonicmoe/_ops.py registers the
// same rules as fake implementations for torch.compile):
//   capacity = T*K (top_k) | min(T*K + E*(tile_m-1), T*E) (token_rounding) | len(token_idx)
//   (general); inference forwards keep nothing, so their saved outputs have 0 rows.
// The number of routed rows TK <= capacity stays on the GPU in expert_offsets[E]. Token rounding
// writes only TK rows; the rows that may stay unwritten (from T*K - E*(tile_m-1) on) are zeroed
// first so that every output element is defined (and deterministic).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "sonicmoe/gpu_layer.h"
#include "sonicmoe/routing.h"

namespace sonicmoe::torch_ext {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ---- argument checks --------------------------------------------------------------------------

std::string shape_string(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

// One tensor argument: CUDA, on `device`, of `dtype`, contiguous, of exactly `shape`, and its
// data aligned to `alignment` bytes (16 for bf16 rows: TMA and 16-byte cp.async).
void check_tensor(const char* op, const Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device,
                  std::vector<int64_t> shape, int64_t alignment) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' must be a tensor (got an undefined tensor)");
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": argument '", name, "' must be a CUDA tensor (got device ", t.device(),
                    "); the sonicmoe backend runs on Hopper GPUs only, use backend='torch' elsewhere");
  TORCH_CHECK_VALUE(t.device() == device, op, ": argument '", name, "' must be on x's device ", device, " (got ",
                    t.device(), ")");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": argument '", name, "' must have dtype ", dtype, " (got ",
                   t.scalar_type(), ")");
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), op, ": argument '", name, "' must have shape ",
                    shape_string(shape), " (got ", shape_string(t.sizes()), ")");
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": argument '", name,
                    "' must be contiguous (row-major); call .contiguous() first (got strides ",
                    shape_string(t.strides()), ")");
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % uintptr_t(alignment) == 0, op, ": argument '", name,
                    "' must start on a ", alignment, "-byte boundary (got data_ptr ", t.data_ptr(),
                    "); a view at an odd offset is not enough, copy it with .clone()");
}

void check_bf16(const char* op, const Tensor& t, const char* name, const at::Device& device,
                std::vector<int64_t> shape) {
  check_tensor(op, t, name, at::kBFloat16, device, std::move(shape), 16);
}

int64_t dim_size(const char* op, const Tensor& t, const char* name, int64_t dims, int64_t dim) {
  TORCH_CHECK_VALUE(t.defined(), op, ": argument '", name, "' must be a tensor");
  TORCH_CHECK_VALUE(t.dim() == dims, op, ": argument '", name, "' must have ", dims, " dimensions (got shape ",
                    shape_string(t.sizes()), ")");
  return t.size(dim);
}

RoutingKind parse_routing(const char* op, std::string_view s) {
  if (s == "top_k") return RoutingKind::top_k;
  if (s == "token_rounding") return RoutingKind::token_rounding;
  if (s == "general") return RoutingKind::general;
  TORCH_CHECK_VALUE(false, op, ": argument 'routing' must be 'top_k', 'token_rounding' or 'general' (got '",
                    std::string(s), "')");
  return RoutingKind::top_k;
}

RoundingMode parse_rounding_mode(const char* op, std::string_view s) {
  if (s == "nearest") return RoundingMode::nearest;
  if (s == "up") return RoundingMode::up;
  if (s == "down") return RoundingMode::down;
  TORCH_CHECK_VALUE(false, op, ": argument 'rounding_mode' must be 'nearest', 'up' or 'down' (got '", std::string(s),
                    "')");
  return RoundingMode::nearest;
}

// The GPU kernels are compiled for sm_90a only; anything else would fail at the first launch
// with a less helpful "no kernel image" error.
void check_hopper(const char* op, const at::Device& device) {
  int major = 0, minor = 0;
  const int index = device.index();
  TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index) == cudaSuccess,
              op, ": cannot query the compute capability of ", device);
  TORCH_CHECK_VALUE(major == 9 && minor == 0, op, ": the sonicmoe kernels are built for Hopper (sm_90a) only; ",
                    device, " has compute capability ", major, ".", minor, ". Use backend='torch' on this GPU");
}

void raise_if_error(const char* op, const Status& status) {
  if (status.ok()) return;
  if (status.code() == StatusCode::invalid_argument || status.code() == StatusCode::unsupported)
    TORCH_CHECK_VALUE(false, op, ": ", status.message());
  TORCH_CHECK(false, op, ": ", status.message());
}

cudaStream_t current_stream(const at::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

// True while `stream` is being captured into a CUDA graph (then nothing may read back to the
// host). A query error (the legacy stream during another thread's global capture) counts as
// capturing: skipping an optional check is safe, synchronising would not be.
bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

void* ptr_or_null(const OptTensor& t) { return t.has_value() && t->defined() ? t->data_ptr() : nullptr; }
bool present(const OptTensor& t) { return t.has_value() && t->defined(); }

// Token rounding writes only the first TK <= capacity rows of its [capacity] outputs, and
// TK >= T*K - E*(tile_m-1) (each expert drops at most tile_m-1 tokens). Rows from that bound on
// are zeroed before the call so that the unwritten ones hold zeros instead of stale memory.
int64_t token_rounding_first_unsure_row(const LayerConfig& c, int64_t capacity) {
  const LayerShape& s = c.shape;
  const int64_t lower = s.num_tokens * s.top_k - s.num_experts * (int64_t(c.rounding.tile_m) - 1);
  return std::clamp<int64_t>(lower, 0, capacity);
}

void zero_rows_from(Tensor& t, int64_t first) {
  if (first < t.size(0)) t.narrow(0, first, t.size(0) - first).zero_();
}

// ---- shared layer description -------------------------------------------------------------------

struct Layer {
  LayerConfig config;
  at::Device device{at::kCUDA};
};

// Reads T, d, n, E from the tensors and checks every weight against them.
Layer describe_layer(const char* op, const Tensor& x, const OptTensor& router_weight, const Tensor& w1,
                     const OptTensor& b1, const Tensor& w2, const OptTensor& b2, int64_t top_k,
                     std::string_view routing, int64_t tile_m, std::string_view rounding_mode) {
  const RoutingKind kind = parse_routing(op, routing);
  const RoundingMode mode = parse_rounding_mode(op, rounding_mode);
  const int64_t T = dim_size(op, x, "x", 2, 0);
  const int64_t d = x.size(1);
  const int64_t E = dim_size(op, w1, "w1", 3, 0);
  const int64_t h_cols = w1.size(1);
  TORCH_CHECK_VALUE(h_cols % 2 == 0, op, ": argument 'w1' must have shape [E, 2n, d] (SwiGLU: gate and up rows ",
                    "interleaved), so its second dimension must be even (got shape ", shape_string(w1.sizes()), ")");
  const int64_t n = h_cols / 2;
  TORCH_CHECK_VALUE(T > 0, op, ": argument 'x' must hold at least one token (got shape ", shape_string(x.sizes()), ")");
  TORCH_CHECK_VALUE(top_k >= 1, op, ": argument 'top_k' must be >= 1 (got ", top_k, ")");
  TORCH_CHECK_VALUE(tile_m >= 1 && tile_m <= (int64_t(1) << 30), op, ": argument 'tile_m' must be in [1, 2^30] (got ",
                    tile_m, ")");
  TORCH_CHECK_VALUE(present(b1) == present(b2), op, ": arguments 'b1' and 'b2' must be given together (got b1 ",
                    present(b1) ? "given" : "None", ", b2 ", present(b2) ? "given" : "None", ")");

  Layer layer;
  layer.device = x.device();
  check_bf16(op, x, "x", layer.device, {T, d});
  check_hopper(op, layer.device);
  check_bf16(op, w1, "w1", layer.device, {E, 2 * n, d});
  check_bf16(op, w2, "w2", layer.device, {E, d, n});
  if (present(b1)) {
    check_bf16(op, *b1, "b1", layer.device, {E, 2 * n});
    check_bf16(op, *b2, "b2", layer.device, {E, d});
  }
  if (kind == RoutingKind::general) {
    TORCH_CHECK_VALUE(!present(router_weight), op,
                      ": argument 'router_weight' must be None for routing='general' (the caller routes)");
  } else {
    TORCH_CHECK_VALUE(present(router_weight), op, ": argument 'router_weight' is required for routing='",
                      std::string(routing), "'");
    check_bf16(op, *router_weight, "router_weight", layer.device, {E, d});
  }
  layer.config = LayerConfig{.shape = {.num_tokens = T, .hidden = d, .intermediate = n, .num_experts = E, .top_k = top_k},
                             .activation = Activation::swiglu,
                             .has_bias = present(b1),
                             .routing = kind,
                             .rounding = {.mode = mode, .tile_m = int32_t(tile_m)},
                             .dtype = DType::bfloat16};
  raise_if_error(op, validate_layer_config(layer.config));
  return layer;
}

// ---- forward ----------------------------------------------------------------------------------------

using ForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

ForwardResult moe_forward_cuda(const Tensor& x, const OptTensor& router_weight, const Tensor& w1, const OptTensor& b1,
                               const Tensor& w2, const OptTensor& b2, const OptTensor& token_idx,
                               const OptTensor& expert_idx, const OptTensor& scores, int64_t top_k,
                               c10::string_view routing, int64_t tile_m, c10::string_view rounding_mode,
                               bool inference, bool check_routing) {
  constexpr const char* op = "sonicmoe::moe_forward";
  const std::string_view routing_sv(routing.data(), routing.size());
  const std::string_view mode_sv(rounding_mode.data(), rounding_mode.size());
  const Layer layer = describe_layer(op, x, router_weight, w1, b1, w2, b2, top_k, routing_sv, tile_m, mode_sv);
  const LayerConfig& c = layer.config;
  const LayerShape& s = c.shape;
  const c10::cuda::CUDAGuard guard(layer.device);

  RoutingList input;
  if (c.routing == RoutingKind::general) {
    TORCH_CHECK_VALUE(present(token_idx) && present(expert_idx) && present(scores), op,
                      ": routing='general' needs 'token_idx', 'expert_idx' and 'scores'");
    const int64_t listed = dim_size(op, *token_idx, "token_idx", 1, 0);
    check_tensor(op, *token_idx, "token_idx", at::kInt, layer.device, {listed}, 4);
    check_tensor(op, *expert_idx, "expert_idx", at::kInt, layer.device, {listed}, 4);
    check_tensor(op, *scores, "scores", at::kFloat, layer.device, {listed}, 4);
    input = {.num_routed = listed,
             .token_idx = token_idx->data_ptr<int32_t>(),
             .expert_idx = expert_idx->data_ptr<int32_t>(),
             .scores = scores->data_ptr<float>()};
  } else {
    TORCH_CHECK_VALUE(!present(token_idx) && !present(expert_idx) && !present(scores), op,
                      ": 'token_idx', 'expert_idx' and 'scores' are inputs of routing='general' only (got routing='",
                      std::string(routing_sv), "')");
  }

  const int64_t capacity = routed_capacity(c, input.num_routed);
  const int64_t rows = inference ? 0 : capacity;
  const auto bf16 = x.options();
  const auto i32 = x.options().dtype(at::kInt);
  Tensor out = at::empty({s.num_tokens, s.hidden}, bf16);
  Tensor h = at::empty({rows, 2 * s.intermediate}, bf16);
  Tensor tok = at::empty({rows}, i32);
  Tensor exp = at::empty({rows}, i32);
  Tensor sc = at::empty({rows}, x.options().dtype(at::kFloat));
  Tensor offsets = at::empty({inference ? 0 : s.num_experts + 1}, i32);
  Tensor gather = at::empty({rows}, i32);
  Tensor scatter = at::empty({rows}, i32);
  Tensor reverse = at::empty({rows}, i32);
  if (!inference && c.routing == RoutingKind::token_rounding) {
    const int64_t first = token_rounding_first_unsure_row(c, capacity);
    for (Tensor* t : {&h, &tok, &exp, &sc, &gather, &scatter, &reverse}) zero_rows_from(*t, first);
  }

  const int64_t ws_bytes = forward_workspace_bytes(c, capacity, inference);
  Tensor workspace = at::empty({ws_bytes}, x.options().dtype(at::kByte));
  const cudaStream_t stream = current_stream(layer.device);

  ForwardParams p{.config = c,
                  .x = x.data_ptr(),
                  .router_weight = ptr_or_null(router_weight),
                  .experts = {.w1 = w1.data_ptr(), .b1 = ptr_or_null(b1), .w2 = w2.data_ptr(), .b2 = ptr_or_null(b2)},
                  .routing_input = input,
                  .out = out.data_ptr(),
                  .inference = inference,
                  .check_routing_input = check_routing && !stream_is_capturing(stream)};
  if (!inference)
    p.saved = SavedState{.capacity = capacity,
                         .token_idx = tok.data_ptr<int32_t>(),
                         .expert_idx = exp.data_ptr<int32_t>(),
                         .scores = sc.data_ptr<float>(),
                         .metadata = {.expert_offsets = offsets.data_ptr<int32_t>(),
                                      .gather_idx = gather.data_ptr<int32_t>(),
                                      .scatter_idx = scatter.data_ptr<int32_t>(),
                                      .reverse_idx = reverse.data_ptr<int32_t>()},
                         .h = h.data_ptr()};
  raise_if_error(op, moe_forward(p, workspace.data_ptr(), ws_bytes, stream));
  return {out, h, tok, exp, sc, offsets, gather, scatter, reverse};
}

// ---- backward ---------------------------------------------------------------------------------------

using BackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

BackwardResult moe_backward_cuda(const Tensor& grad_out, const Tensor& x, const OptTensor& router_weight,
                                 const Tensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
                                 const Tensor& h, const Tensor& token_idx, const Tensor& expert_idx,
                                 const Tensor& scores, const Tensor& expert_offsets, const Tensor& gather_idx,
                                 const Tensor& scatter_idx, const Tensor& reverse_idx, int64_t top_k,
                                 c10::string_view routing, int64_t tile_m, c10::string_view rounding_mode) {
  constexpr const char* op = "sonicmoe::moe_backward";
  const std::string_view routing_sv(routing.data(), routing.size());
  const std::string_view mode_sv(rounding_mode.data(), rounding_mode.size());
  const Layer layer = describe_layer(op, x, router_weight, w1, b1, w2, b2, top_k, routing_sv, tile_m, mode_sv);
  const LayerConfig& c = layer.config;
  const LayerShape& s = c.shape;
  const c10::cuda::CUDAGuard guard(layer.device);

  check_bf16(op, grad_out, "grad_out", layer.device, {s.num_tokens, s.hidden});
  const int64_t capacity = dim_size(op, h, "h", 2, 0);
  check_bf16(op, h, "h", layer.device, {capacity, 2 * s.intermediate});
  const int64_t expected = c.routing == RoutingKind::general ? capacity : routed_capacity(c, 0);
  TORCH_CHECK_VALUE(capacity == expected, op, ": argument 'h' must have the forward's ", expected,
                    " rows for routing='", std::string(routing_sv), "' (got ", capacity,
                    "); pass the saved state of a training (non-inference) forward");
  check_tensor(op, token_idx, "token_idx", at::kInt, layer.device, {capacity}, 4);
  check_tensor(op, expert_idx, "expert_idx", at::kInt, layer.device, {capacity}, 4);
  check_tensor(op, scores, "scores", at::kFloat, layer.device, {capacity}, 4);
  check_tensor(op, expert_offsets, "expert_offsets", at::kInt, layer.device, {s.num_experts + 1}, 4);
  check_tensor(op, gather_idx, "gather_idx", at::kInt, layer.device, {capacity}, 4);
  check_tensor(op, scatter_idx, "scatter_idx", at::kInt, layer.device, {capacity}, 4);
  check_tensor(op, reverse_idx, "reverse_idx", at::kInt, layer.device, {capacity}, 4);

  const auto bf16 = x.options();
  Tensor grad_x = at::empty({s.num_tokens, s.hidden}, bf16);
  Tensor grad_w1 = at::empty(w1.sizes(), bf16);
  Tensor grad_w2 = at::empty(w2.sizes(), bf16);
  Tensor grad_b1 = c.has_bias ? at::empty(b1->sizes(), bf16) : at::empty({0}, bf16);
  Tensor grad_b2 = c.has_bias ? at::empty(b2->sizes(), bf16) : at::empty({0}, bf16);
  Tensor grad_wr = c.routing == RoutingKind::general ? at::empty({0}, bf16) : at::empty(router_weight->sizes(), bf16);
  Tensor grad_scores = at::empty({capacity}, x.options().dtype(at::kFloat));
  if (c.routing == RoutingKind::token_rounding) zero_rows_from(grad_scores, token_rounding_first_unsure_row(c, capacity));

  const int64_t ws_bytes = backward_workspace_bytes(c, capacity);
  Tensor workspace = at::empty({ws_bytes}, x.options().dtype(at::kByte));
  const cudaStream_t stream = current_stream(layer.device);

  const BackwardParams p{
      .config = c,
      .x = x.data_ptr(),
      .router_weight = ptr_or_null(router_weight),
      .experts = {.w1 = w1.data_ptr(), .b1 = ptr_or_null(b1), .w2 = w2.data_ptr(), .b2 = ptr_or_null(b2)},
      .saved = {.capacity = capacity,
                .token_idx = token_idx.data_ptr<int32_t>(),
                .expert_idx = expert_idx.data_ptr<int32_t>(),
                .scores = scores.data_ptr<float>(),
                .metadata = {.expert_offsets = expert_offsets.data_ptr<int32_t>(),
                             .gather_idx = gather_idx.data_ptr<int32_t>(),
                             .scatter_idx = scatter_idx.data_ptr<int32_t>(),
                             .reverse_idx = reverse_idx.data_ptr<int32_t>()},
                .h = h.data_ptr()},
      .grad_out = grad_out.data_ptr(),
      .grad_x = grad_x.data_ptr(),
      .grad_w1 = grad_w1.data_ptr(),
      .grad_b1 = c.has_bias ? grad_b1.data_ptr() : nullptr,
      .grad_w2 = grad_w2.data_ptr(),
      .grad_b2 = c.has_bias ? grad_b2.data_ptr() : nullptr,
      .grad_router_weight = c.routing == RoutingKind::general ? nullptr : grad_wr.data_ptr(),
      .grad_scores = grad_scores.data_ptr<float>()};
  raise_if_error(op, moe_backward(p, workspace.data_ptr(), ws_bytes, stream));
  return {grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_wr, grad_scores};
}

// CPU tensors reach these instead of a generic "no kernel for backend CPU" dispatcher error.
ForwardResult moe_forward_cpu(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&, const Tensor&,
                              const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, int64_t,
                              c10::string_view, int64_t, c10::string_view, bool, bool) {
  TORCH_CHECK_VALUE(false, "sonicmoe::moe_forward: the sonicmoe ops take CUDA tensors on a Hopper GPU; "
                           "for CPU tensors use the pure-PyTorch backend (backend='torch')");
  return {};
}

BackwardResult moe_backward_cpu(const Tensor&, const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
                                const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                c10::string_view, int64_t, c10::string_view) {
  TORCH_CHECK_VALUE(false, "sonicmoe::moe_backward: the sonicmoe ops take CUDA tensors on a Hopper GPU; "
                           "for CPU tensors use the pure-PyTorch backend (backend='torch')");
  return {};
}

}  // namespace
}  // namespace sonicmoe::torch_ext

// Outputs of moe_forward, in order: out [T, d]; then the saved state (0 rows when inference):
// h [capacity, 2n] bf16 (grouped order), token_idx, expert_idx [capacity] int32, scores
// [capacity] fp32 (flat order), expert_offsets [E+1] int32, gather_idx, scatter_idx,
// reverse_idx [capacity] int32. TK = expert_offsets[E] <= capacity.
// Outputs of moe_backward: grad_x, grad_w1, grad_b1 ([0] without bias), grad_w2, grad_b2 ([0]
// without bias), grad_router_weight ([0] for general routing), grad_scores [capacity] fp32 (dS,
// flat order; rows past TK are 0).
TORCH_LIBRARY(sonicmoe, m) {
  m.def(
      "moe_forward(Tensor x, Tensor? router_weight, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "Tensor? token_idx, Tensor? expert_idx, Tensor? scores, int top_k, str routing, int tile_m, "
      "str rounding_mode, bool inference, bool check_routing) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "moe_backward(Tensor grad_out, Tensor x, Tensor? router_weight, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, Tensor h, Tensor token_idx, Tensor expert_idx, Tensor scores, Tensor expert_offsets, "
      "Tensor gather_idx, Tensor scatter_idx, Tensor reverse_idx, int top_k, str routing, int tile_m, "
      "str rounding_mode) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(sonicmoe, CUDA, m) {
  m.impl("moe_forward", &sonicmoe::torch_ext::moe_forward_cuda);
  m.impl("moe_backward", &sonicmoe::torch_ext::moe_backward_cuda);
}

TORCH_LIBRARY_IMPL(sonicmoe, CPU, m) {
  m.impl("moe_forward", &sonicmoe::torch_ext::moe_forward_cpu);
  m.impl("moe_backward", &sonicmoe::torch_ext::moe_backward_cpu);
}
