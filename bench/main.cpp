// sonicmoe_main — the project's main job.
//
// The CPU half of the main job (scripts/run.sh runs it first, then the GPU layer benchmark
// bench/layer_bench.cu where a Hopper GPU is present): the CPU reference (double accumulation) on
// a small layer — forward and backward, the bytes the forward caches for the backward, and a
// self-check of the backward against the independent naive backward. Exit code 0 only when that
// check passes.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "reference/host_layer.h"
#include "sonicmoe/sonicmoe.h"
#ifdef SONICMOE_WITH_CUDA
#include "sonicmoe/device.h"
#endif

namespace {

using namespace sonicmoe;

struct Args {
  LayerConfig config{.shape = {512, 256, 128, 16, 4}, .rounding = {}, .dtype = DType::bfloat16};
  uint64_t seed = 1;
};

[[noreturn]] void usage(const char* error) {
  if (error) std::fprintf(stderr, "error: %s\n\n", error);
  std::fprintf(stderr,
               "usage: sonicmoe_main [--tokens T] [--hidden d] [--intermediate n] [--experts E] [--top-k K]\n"
               "                     [--routing top_k|token_rounding] [--tile-m M] [--rounding nearest|up|down]\n"
               "                     [--activation swiglu|relu_squared|gelu_tanh] [--bias]\n"
               "                     [--dtype bfloat16|float32|float64] [--seed S]\n"
               "Runs the CPU reference on one layer (default T=512 d=256 n=128 E=16 K=4, bf16, SwiGLU).\n");
  std::exit(error ? 2 : 0);
}

Args parse(int argc, char** argv) {
  Args a;
  LayerShape& s = a.config.shape;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") usage(nullptr);
    if (flag == "--bias") {
      a.config.has_bias = true;
      continue;
    }
    if (i + 1 >= argc) usage(("missing value after " + flag).c_str());
    const std::string v = argv[++i];
    auto number = [&]() {
      char* end = nullptr;
      const long long n = std::strtoll(v.c_str(), &end, 10);
      if (!end || *end) usage((flag + " needs an integer, got '" + v + "'").c_str());
      return int64_t(n);
    };
    if (flag == "--tokens") s.num_tokens = number();
    else if (flag == "--hidden") s.hidden = number();
    else if (flag == "--intermediate") s.intermediate = number();
    else if (flag == "--experts") s.num_experts = number();
    else if (flag == "--top-k") s.top_k = number();
    else if (flag == "--tile-m") a.config.rounding.tile_m = int32_t(number());
    else if (flag == "--seed") a.seed = uint64_t(number());
    else if (flag == "--routing" && v == "top_k") a.config.routing = RoutingKind::top_k;
    else if (flag == "--routing" && v == "token_rounding") a.config.routing = RoutingKind::token_rounding;
    else if (flag == "--rounding" && v == "nearest") a.config.rounding.mode = RoundingMode::nearest;
    else if (flag == "--rounding" && v == "up") a.config.rounding.mode = RoundingMode::up;
    else if (flag == "--rounding" && v == "down") a.config.rounding.mode = RoundingMode::down;
    else if (flag == "--activation" && v == "swiglu") a.config.activation = Activation::swiglu;
    else if (flag == "--activation" && v == "relu_squared") a.config.activation = Activation::relu_squared;
    else if (flag == "--activation" && v == "gelu_tanh") a.config.activation = Activation::gelu_tanh;
    else if (flag == "--dtype" && v == "bfloat16") a.config.dtype = DType::bfloat16;
    else if (flag == "--dtype" && v == "float32") a.config.dtype = DType::float32;
    else if (flag == "--dtype" && v == "float64") a.config.dtype = DType::float64;
    else usage(("unknown flag or value: " + flag + " " + v).c_str());
  }
  return a;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  std::printf("sonicmoe main job\n");
#ifdef SONICMOE_WITH_CUDA
  const DeviceInfo gpu = query_device();
  if (gpu.is_hopper)
    std::printf("GPU: %s (sm_%d%d, %d SMs). The GPU layer benchmark is not built yet (grouped-GEMM engine and GPU\n"
                "     layer are open work); running the CPU reference.\n",
                gpu.name.c_str(), gpu.major, gpu.minor, gpu.multiprocessors);
  else
    std::printf("GPU: none usable: %s.\n     The GPU layer needs an sm_90 (Hopper: H100/H200) GPU; running the CPU "
                "reference instead.\n",
                gpu.reason.c_str());
#else
  std::printf("GPU: this build has no CUDA (SONICMOE_BUILD_CUDA=OFF). The GPU layer needs an sm_90 (Hopper:\n"
              "     H100/H200) GPU and a CUDA build; running the CPU reference instead.\n");
#endif

  const LayerConfig& c = args.config;
  if (const Status s = validate_layer_config(c); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.message().c_str());
    return 2;
  }
  const LayerShape& s = c.shape;
  std::printf("CPU reference (double accumulation): T=%lld d=%lld n=%lld E=%lld K=%lld, %s, %s, %s routing%s\n",
              (long long)s.num_tokens, (long long)s.hidden, (long long)s.intermediate, (long long)s.num_experts,
              (long long)s.top_k, to_string(c.activation), to_string(c.dtype), to_string(c.routing),
              c.has_bias ? ", with biases" : "");

  reference::LayerData layer(c, args.seed);
  auto start = std::chrono::steady_clock::now();
  if (const Status st = layer.forward(); !st.ok()) {
    std::fprintf(stderr, "forward failed: %s\n", st.message().c_str());
    return 1;
  }
  const double forward_s = seconds_since(start);
  const int64_t TK = layer.num_routed();
  start = std::chrono::steady_clock::now();
  if (const Status st = layer.backward(); !st.ok()) {
    std::fprintf(stderr, "backward failed: %s\n", st.message().c_str());
    return 1;
  }
  const double backward_s = seconds_since(start);

  // Model FLOPs (DESIGN.md §5): forward 2·TK·d·(h_cols + n), backward twice that.
  const double forward_flops = 2.0 * double(TK) * double(s.hidden) * double(h_cols(c) + s.intermediate);
  const double out_norm = [&] {
    double acc = 0;
    for (double v : layer.out.values()) acc += v * v;
    return std::sqrt(acc);
  }();
  std::printf("  routed rows TK      : %lld (top-K would route %lld)\n", (long long)TK,
              (long long)(s.num_tokens * s.top_k));
  std::printf("  forward             : %8.3f s  %7.2f GFLOP/s (CPU)   |out|_F = %.6g\n", forward_s,
              forward_flops / forward_s * 1e-9, out_norm);
  std::printf("  backward            : %8.3f s  %7.2f GFLOP/s (CPU)\n", backward_s,
              2 * forward_flops / backward_s * 1e-9);
  std::printf("  cached for backward : %lld bytes = x %lld + H %lld + scores %lld + int32 routing %lld\n",
              (long long)saved_state_bytes(c, TK), (long long)(s.num_tokens * s.hidden * dtype_size(c.dtype)),
              (long long)(TK * h_cols(c) * dtype_size(c.dtype)), (long long)(4 * TK),
              (long long)(5 * 4 * TK + 4 * (s.num_experts + 1)));

  // Self-check: the production backward (dS = <dA', A>, A recomputed from the saved H) against
  // the independent naive backward (dS = <dO, Y>, H recomputed from x).
  const std::vector<double> dx = layer.grad_x.values(), dw1 = layer.grad_w1.values(), dw2 = layer.grad_w2.values(),
                            dwr = layer.grad_wr.values();
  if (const Status st = layer.backward_naive(); !st.ok()) {
    std::fprintf(stderr, "naive backward failed: %s\n", st.message().c_str());
    return 1;
  }
  const double e_dx = reference::relative_error(dx, layer.grad_x.values());
  const double e_dw1 = reference::relative_error(dw1, layer.grad_w1.values());
  const double e_dw2 = reference::relative_error(dw2, layer.grad_w2.values());
  const double e_dwr = reference::relative_error(dwr, layer.grad_wr.values());
  // In bf16 the two differ by the rounding of the saved H (the naive path recomputes it exactly).
  const double tolerance = c.dtype == DType::bfloat16 ? 2e-2 : c.dtype == DType::float32 ? 1e-5 : 1e-12;
  const bool pass = e_dx < tolerance && e_dw1 < tolerance && e_dw2 < tolerance && e_dwr < tolerance;
  std::printf("  self-check vs naive backward (relative Frobenius): dx %.2e  dW1 %.2e  dW2 %.2e  dWr %.2e  -> %s\n",
              e_dx, e_dw1, e_dw2, e_dwr, pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
