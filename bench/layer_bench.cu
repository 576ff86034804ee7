// layer_bench — the project's main benchmark: the whole GPU MoE layer (sonicmoe/gpu_layer.h)
// at the 12 configurations of DESIGN.md §5, forward, backward and forward+backward, with
//   - TFLOPS by the paper's convention (6, 12, 18 · TK·d·n; router in the timed region),
//   - the bytes the forward caches for the backward (2Td + 4TKn + routing metadata) and the peak
//     activation memory of one layer's forward+backward,
//   - in the same run, the balanced cuBLAS upper bound of the forward: batched GEMM + SwiGLU +
//     batched GEMM + aggregation with exactly TK/E rows per expert (no router, no gather),
//   - the ratio to the published SonicMoE H100 numbers (read from the paper's Figure 14),
//   - token rounding (nearest, M_tile 128) against top-K at two configurations.
// Inputs: x ~ N(0,1), weights ~ N(0, 1/fan_in), the router decides (top-K). Median of CUDA-event
// timings after warm-up. One progress line per configuration, a table at the end, a JSON file.
//
//   layer_bench [--configs all|none|0,3,7] [--reps 20] [--sustain-ms 0] [--no-rounding] [--json FILE]
// --sustain-ms N: each timed function first runs back to back for N ms, so that it is timed at
// the GPU's steady power-limited clock (bench_util.cuh, median_ms).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "combine/combine.h"
#include "sonicmoe/device.h"
#include "sonicmoe/gpu_layer.h"

namespace {

using namespace sonicmoe;
using namespace sonicmoe::bench;

struct Config {
  const char* model;
  int64_t T, d, n, E, K;
  double published_fwd, published_bwd, published_peak_gib;  // SonicMoE, H100 SXM, paper Figure 14
};
const Config kConfigs[] = {
    {"1.4B", 40960, 768, 256, 128, 8, 336, 364, 0.56},     {"1.4B", 40960, 768, 512, 64, 4, 396, 396, 0.56},
    {"1.4B", 40960, 768, 1024, 32, 2, 404, 434, 0.56},     {"7B", 24576, 1536, 256, 128, 8, 364, 404, 0.60},
    {"7B", 24576, 1536, 512, 64, 4, 432, 439, 0.60},       {"7B", 24576, 1536, 1024, 32, 2, 464, 466, 0.60},
    {"30B", 32768, 4096, 256, 256, 16, 428, 460, 2.43},    {"30B", 32768, 4096, 512, 128, 8, 502, 511, 2.43},
    {"30B", 32768, 4096, 1024, 64, 4, 552, 554, 2.43},     {"120B", 32768, 4096, 512, 256, 16, 518, 526, 4.43},
    {"120B", 32768, 4096, 1024, 128, 8, 558, 567, 4.43},   {"120B", 32768, 4096, 2048, 64, 4, 595, 586, 4.43},
};
// Token rounding against top-K (DESIGN.md §5: published +16% / +9% and +26% / +16%, fwd / fwd+bwd).
const Config kRoundingConfigs[] = {{"TR-a", 16384, 1536, 1024, 128, 2, 0, 0, 0}, {"TR-b", 16384, 4096, 1024, 256, 4, 0, 0, 0}};

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

#define BENCH_OK(expr)                                                                       \
  do {                                                                                       \
    const ::sonicmoe::Status s_ = (expr);                                                    \
    if (!s_.ok()) {                                                                          \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, s_.message().c_str()); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

template <class T>
T* device_alloc(int64_t count) {
  T* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, size_t(std::max<int64_t>(count, 1)) * sizeof(T)));
  return p;
}

__global__ void swiglu_kernel(const __nv_bfloat162* h, __nv_bfloat16* a, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const float2 gu = __bfloat1622float2(h[i]);
    a[i] = __float2bfloat16(gu.x / (1.f + __expf(-gu.x)) * gu.y);
  }
}

struct LayerResult {
  const Config* config;
  RoutingKind routing;
  int64_t num_routed;
  double fwd_ms, bwd_ms, fwdbwd_ms, bound_fwd_ms;
  double cached_bytes, formula_bytes, peak_activation_bytes, device_bytes;
  double flops(double factor) const {
    return factor * double(config->T * config->K) * double(config->d) * double(config->n);
  }
  double tflops(double factor, double ms) const { return flops(factor) / (ms * 1e-3) / 1e12; }
};

// One layer: allocate, route, time forward / backward / both, and (top-K) the cuBLAS bound.
LayerResult run_layer(const Config& c, RoutingKind routing, int reps, double sustain_ms, cublasHandle_t cublas,
                      cudaStream_t stream) {
  size_t free_before = 0, total = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_before, &total));
  LayerConfig config{.shape = {c.T, c.d, c.n, c.E, c.K},
                     .activation = Activation::swiglu,
                     .has_bias = false,
                     .routing = routing,
                     .rounding = {.mode = RoundingMode::nearest, .tile_m = 128},
                     .dtype = DType::bfloat16};
  const int64_t cap = routed_capacity(config, 0), hc = 2 * c.n;
  DeviceBf16 x(size_t(c.T * c.d), 1.f, 1), wr(size_t(c.E * c.d), 1.f / std::sqrt(float(c.d)), 2),
      w1(size_t(c.E * hc * c.d), 1.f / std::sqrt(float(c.d)), 3), w2(size_t(c.E * c.d * c.n), 1.f / std::sqrt(float(c.n)), 4),
      grad_out(size_t(c.T * c.d), 1.f, 5), out(size_t(c.T * c.d), 0.f, 0), grad_x(size_t(c.T * c.d), 0.f, 0),
      grad_wr(size_t(c.E * c.d), 0.f, 0), grad_w1(size_t(c.E * hc * c.d), 0.f, 0), grad_w2(size_t(c.E * c.d * c.n), 0.f, 0),
      h(size_t(cap * hc), 0.f, 0);
  SavedState saved{.capacity = cap,
                   .token_idx = device_alloc<int32_t>(cap),
                   .expert_idx = device_alloc<int32_t>(cap),
                   .scores = device_alloc<float>(cap),
                   .metadata = {device_alloc<int32_t>(c.E + 1), device_alloc<int32_t>(cap), device_alloc<int32_t>(cap),
                                device_alloc<int32_t>(cap)},
                   .h = h.ptr};
  const int64_t fwd_ws_bytes = forward_workspace_bytes(config, cap, false);
  const int64_t bwd_ws_bytes = backward_workspace_bytes(config, cap);
  char* fwd_ws = device_alloc<char>(fwd_ws_bytes);
  char* bwd_ws = device_alloc<char>(bwd_ws_bytes);

  const ExpertWeights experts{w1.ptr, nullptr, w2.ptr, nullptr};
  const ForwardParams fwd{.config = config, .x = x.ptr, .router_weight = wr.ptr, .experts = experts, .out = out.ptr, .saved = saved};
  const BackwardParams bwd{.config = config,
                           .x = x.ptr,
                           .router_weight = wr.ptr,
                           .experts = experts,
                           .saved = saved,
                           .grad_out = grad_out.ptr,
                           .grad_x = grad_x.ptr,
                           .grad_w1 = grad_w1.ptr,
                           .grad_w2 = grad_w2.ptr,
                           .grad_router_weight = grad_wr.ptr};
  auto forward = [&] { BENCH_OK(moe_forward(fwd, fwd_ws, fwd_ws_bytes, stream)); };
  auto backward = [&] { BENCH_OK(moe_backward(bwd, bwd_ws, bwd_ws_bytes, stream)); };

  LayerResult r{.config = &c, .routing = routing};
  r.fwd_ms = median_ms(forward, stream, 3, reps, sustain_ms);
  r.bwd_ms = median_ms(backward, stream, 3, reps, sustain_ms);
  r.fwdbwd_ms = median_ms([&] { forward(); backward(); }, stream, 2, reps, sustain_ms);
  int32_t tk = 0;
  BENCH_CUDA(cudaMemcpy(&tk, saved.metadata.expert_offsets + c.E, 4, cudaMemcpyDeviceToHost));
  r.num_routed = tk;
  // A number never comes from a broken run: the output must be finite and not all zero.
  {
    std::vector<uint16_t> o(size_t(c.T * c.d));
    BENCH_CUDA(cudaMemcpy(o.data(), out.ptr, o.size() * 2, cudaMemcpyDeviceToHost));
    size_t nonzero = 0;
    for (uint16_t bits : o) {
      if ((bits & 0x7f80) == 0x7f80) { std::fprintf(stderr, "layer_bench: non-finite output\n"); std::exit(1); }
      nonzero += (bits & 0x7fff) != 0;
    }
    if (nonzero < o.size() / 2) { std::fprintf(stderr, "layer_bench: output mostly zero\n"); std::exit(1); }
  }

  // Memory: the contract's cached bytes, and the activations alive at the forward's and the
  // backward's peak (x and the saved state throughout; out + forward workspace, then
  // dO + dx + backward workspace). Weights and their gradients are not activations.
  r.cached_bytes = double(saved_state_bytes(config, tk));
  r.formula_bytes = 2.0 * c.T * c.d + 4.0 * tk * c.n;
  const double saved_arrays = r.cached_bytes - 2.0 * c.T * c.d;
  r.peak_activation_bytes = 2.0 * c.T * c.d + saved_arrays +
                            std::max(2.0 * c.T * c.d + fwd_ws_bytes, 4.0 * c.T * c.d + double(bwd_ws_bytes));
  size_t free_after = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_after, &total));
  r.device_bytes = double(free_before - free_after);

  // Balanced cuBLAS upper bound of the forward (top-K only): TK/E rows per expert, no gather.
  r.bound_fwd_ms = 0;
  if (routing == RoutingKind::top_k && (c.T * c.K) % c.E == 0) {
    const int64_t m = c.T * c.K / c.E, tkr = c.T * c.K;
    DeviceBf16 xg(size_t(tkr * c.d), 1.f, 6), hb(size_t(tkr * hc), 0.f, 0), ab(size_t(tkr * c.n), 0.f, 0),
        yb(size_t(tkr * c.d), 0.f, 0);
    const float one = 1.f, zero = 0.f;
    BENCH_CUBLAS(cublasSetStream(cublas, stream));
    auto bound = [&] {
      BENCH_CUBLAS(cublasGemmStridedBatchedEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(hc), int(m), int(c.d), &one, w1.ptr,
                                              CUDA_R_16BF, int(c.d), hc * c.d, xg.ptr, CUDA_R_16BF, int(c.d), m * c.d,
                                              &zero, hb.ptr, CUDA_R_16BF, int(hc), m * hc, int(c.E), CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
      swiglu_kernel<<<4096, 256, 0, stream>>>(reinterpret_cast<const __nv_bfloat162*>(hb.ptr), ab.ptr, tkr * c.n);
      BENCH_CUBLAS(cublasGemmStridedBatchedEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(c.d), int(m), int(c.n), &one, w2.ptr,
                                              CUDA_R_16BF, int(c.n), c.d * c.n, ab.ptr, CUDA_R_16BF, int(c.n), m * c.n,
                                              &zero, yb.ptr, CUDA_R_16BF, int(c.d), m * c.d, int(c.E), CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT));
      // Aggregation with the real routing's row pattern (our combine kernel, the same in both).
      BENCH_OK(combine::combine_rows({.num_tokens = c.T,
                                      .hidden = c.d,
                                      .capacity = tkr,
                                      .top_k = c.K,
                                      .num_routed = saved.metadata.expert_offsets + c.E,
                                      .token_idx = saved.token_idx,
                                      .reverse_idx = saved.metadata.reverse_idx,
                                      .scores = saved.scores,
                                      .rows = reinterpret_cast<const bfloat16*>(yb.ptr),
                                      .out = reinterpret_cast<bfloat16*>(out.ptr)},
                                     stream));
    };
    r.bound_fwd_ms = median_ms(bound, stream, 3, reps, sustain_ms);
  }

  for (void* p : {(void*)saved.token_idx, (void*)saved.expert_idx, (void*)saved.scores, (void*)saved.metadata.expert_offsets,
                  (void*)saved.metadata.gather_idx, (void*)saved.metadata.scatter_idx, (void*)saved.metadata.reverse_idx,
                  (void*)fwd_ws, (void*)bwd_ws})
    cudaFree(p);
  return r;
}

std::vector<int> parse_list(const char* s, int count) {
  std::vector<int> v;
  if (!std::strcmp(s, "none")) return v;
  if (!std::strcmp(s, "all")) {
    for (int i = 0; i < count; ++i) v.push_back(i);
    return v;
  }
  for (const char* p = s; *p;) {
    char* end = nullptr;
    const long i = std::strtol(p, &end, 10);
    if (end == p || i < 0 || i >= count) {
      std::fprintf(stderr, "layer_bench: bad --configs entry in '%s' (0..%d)\n", s, count - 1);
      std::exit(2);
    }
    v.push_back(int(i));
    p = *end == ',' ? end + 1 : end;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const char* configs_arg = "all";
  const char* json = nullptr;
  int reps = 20;
  double sustain_ms = 0;
  bool rounding = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--configs") && i + 1 < argc) configs_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--sustain-ms") && i + 1 < argc) sustain_ms = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!std::strcmp(argv[i], "--no-rounding")) rounding = false;
    else {
      std::fprintf(stderr,
                   "usage: layer_bench [--configs all|none|0,3,7] [--reps N] [--sustain-ms MS] [--no-rounding] "
                   "[--json FILE]\n");
      return 2;
    }
  }
  const DeviceInfo dev = query_device();
  if (!dev.is_hopper) {
    std::printf("layer_bench: no Hopper (sm_90) GPU: %s; nothing to measure.\n", dev.reason.c_str());
    return 0;
  }
  std::printf("card: %s (%d SMs); published SonicMoE numbers are H100 SXM; median of %d runs after %s\n",
              dev.name.c_str(), dev.multiprocessors, reps,
              sustain_ms > 0 ? (std::to_string(int(sustain_ms)) + " ms of back-to-back runs (steady clock)").c_str()
                             : "a few warm-up runs");
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t cublas;
  BENCH_CUBLAS(cublasCreate(&cublas));

  std::vector<LayerResult> results;
  for (int i : parse_list(configs_arg, int(std::size(kConfigs)))) {
    const Config& c = kConfigs[i];
    const LayerResult r = run_layer(c, RoutingKind::top_k, reps, sustain_ms, cublas, stream);
    std::printf("[%2d] %-4s T=%-5lld d=%-4lld n=%-4lld E=%-3lld K=%-2lld  fwd %6.1f  bwd %6.1f  fwd+bwd %6.1f TFLOPS"
                "  (%.2f / %.2f / %.2f ms)  bound fwd %6.1f  cached %.3f GiB  peak act. %.3f GiB\n",
                i, c.model, (long long)c.T, (long long)c.d, (long long)c.n, (long long)c.E, (long long)c.K,
                r.tflops(6, r.fwd_ms), r.tflops(12, r.bwd_ms), r.tflops(18, r.fwdbwd_ms), r.fwd_ms, r.bwd_ms,
                r.fwdbwd_ms, r.bound_fwd_ms > 0 ? r.tflops(6, r.bound_fwd_ms) : 0.0, r.cached_bytes / kGiB,
                r.peak_activation_bytes / kGiB);
    std::fflush(stdout);
    results.push_back(r);
  }
  std::vector<std::pair<LayerResult, LayerResult>> rounding_results;
  if (rounding)
    for (const Config& c : kRoundingConfigs) {
      const LayerResult tk = run_layer(c, RoutingKind::top_k, reps, sustain_ms, cublas, stream);
      const LayerResult tr = run_layer(c, RoutingKind::token_rounding, reps, sustain_ms, cublas, stream);
      std::printf("[TR] T=%lld d=%lld n=%lld E=%lld K=%lld  top-K fwd %.3f ms fwd+bwd %.3f ms | token rounding (nearest, "
                  "M_tile 128, TK=%lld) fwd %.3f ms fwd+bwd %.3f ms | speedup fwd %.2fx fwd+bwd %.2fx\n",
                  (long long)c.T, (long long)c.d, (long long)c.n, (long long)c.E, (long long)c.K, tk.fwd_ms, tk.fwdbwd_ms,
                  (long long)tr.num_routed, tr.fwd_ms, tr.fwdbwd_ms, tk.fwd_ms / tr.fwd_ms, tk.fwdbwd_ms / tr.fwdbwd_ms);
      std::fflush(stdout);
      rounding_results.push_back({tk, tr});
    }

  std::printf("\nMoE layer on %s, bf16, SwiGLU, top-K routing (TFLOPS: fwd 6, bwd 12, fwd+bwd 18 x TK*d*n)\n",
              dev.name.c_str());
  std::printf("| model | T | d | n | E | K | fwd | bwd | fwd+bwd | fwd / cuBLAS bound | fwd / paper | bwd / paper | cached GiB "
              "| formula GiB | peak act. GiB (paper) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const LayerResult& r : results) {
    const Config& c = *r.config;
    std::printf("| %s | %lld | %lld | %lld | %lld | %lld | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.3f | %.3f | %.3f (%.2f) |\n",
                c.model, (long long)c.T, (long long)c.d, (long long)c.n, (long long)c.E, (long long)c.K,
                r.tflops(6, r.fwd_ms), r.tflops(12, r.bwd_ms), r.tflops(18, r.fwdbwd_ms),
                r.bound_fwd_ms > 0 ? r.bound_fwd_ms / r.fwd_ms : 0.0, r.tflops(6, r.fwd_ms) / c.published_fwd,
                r.tflops(12, r.bwd_ms) / c.published_bwd, r.cached_bytes / kGiB, r.formula_bytes / kGiB,
                r.peak_activation_bytes / kGiB, c.published_peak_gib);
  }

  if (json) {
    FILE* f = std::fopen(json, "w");
    if (!f) { std::fprintf(stderr, "layer_bench: cannot write %s\n", json); return 1; }
    std::fprintf(f, "{\"card\": \"%s\", \"reps\": %d, \"sustain_ms\": %.0f, \"configs\": [\n", dev.name.c_str(), reps,
                 sustain_ms);
    auto emit = [&](const LayerResult& r, bool last) {
      const Config& c = *r.config;
      std::fprintf(f,
                   "  {\"model\": \"%s\", \"T\": %lld, \"d\": %lld, \"n\": %lld, \"E\": %lld, \"K\": %lld, \"routing\": \"%s\", "
                   "\"num_routed\": %lld, \"fwd_ms\": %.5f, \"bwd_ms\": %.5f, \"fwdbwd_ms\": %.5f, \"fwd_tflops\": %.2f, "
                   "\"bwd_tflops\": %.2f, \"fwdbwd_tflops\": %.2f, \"bound_fwd_ms\": %.5f, \"cached_bytes\": %.0f, "
                   "\"formula_bytes\": %.0f, \"peak_activation_bytes\": %.0f, \"device_bytes\": %.0f, "
                   "\"published_fwd_tflops\": %.0f, \"published_bwd_tflops\": %.0f}%s\n",
                   c.model, (long long)c.T, (long long)c.d, (long long)c.n, (long long)c.E, (long long)c.K,
                   to_string(r.routing), (long long)r.num_routed, r.fwd_ms, r.bwd_ms, r.fwdbwd_ms, r.tflops(6, r.fwd_ms),
                   r.tflops(12, r.bwd_ms), r.tflops(18, r.fwdbwd_ms), r.bound_fwd_ms, r.cached_bytes, r.formula_bytes,
                   r.peak_activation_bytes, r.device_bytes, c.published_fwd, c.published_bwd, last ? "" : ",");
    };
    std::vector<const LayerResult*> all;
    for (const auto& r : results) all.push_back(&r);
    for (const auto& [a, b] : rounding_results) { all.push_back(&a); all.push_back(&b); }
    for (size_t i = 0; i < all.size(); ++i) emit(*all[i], i + 1 == all.size());
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  cublasDestroy(cublas);
  cudaStreamDestroy(stream);
  return 0;
}
