// gemm_bench — the grouped GEMM roles at the issue-3 shapes, side by side with a dense cuBLAS
// GEMM of the same FLOPs measured in the same process (PyTorch grouped_mm is measured by
// bench/grouped_mm_baseline.py in the same device call). Uniform random top-K routing; median of
// CUDA-event timings after warm-up. Each timed kernel's output is also checked once against the
// simple GPU reference (relative Frobenius error), so a number never comes from a wrong result.
//
//   gemm_bench [--shapes 0,1,2] [--roles up,down,dh,dw2,dx,dw1] [--reps 30] [--sustain-ms 0] [--json out.json]
// (--roles: only those roles; the default is all six. Most of a run's time is the host-side
// routing and error checks of the large shapes, ~20 s per shape for all roles. --sustain-ms N:
// each kernel first runs back to back for N ms, so that it is timed at the steady power-limited
// clock (bench_util.cuh, median_ms); 2000 is enough on an H200.)
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "reference/gpu_reference.cuh"
#include "sonicmoe/device.h"
#include "sonicmoe/grouped_gemm.h"
#include "sonicmoe/reference.h"

namespace {

using namespace sonicmoe;
using namespace sonicmoe::bench;

struct Shape {
  int64_t T, d, n, E, K;
};
const Shape kShapes[] = {{24576, 1536, 256, 128, 8}, {32768, 4096, 512, 128, 8}, {32768, 4096, 1024, 128, 8}};

// Uniform random top-K routing built on the host with the reference (the GPU router is issue 4).
struct Routing {
  int64_t num_rows;
  int32_t *offsets = nullptr, *gather = nullptr;
  Routing(const Shape& s, uint64_t seed) : num_rows(s.T * s.K) {
    std::vector<float> logits(static_cast<size_t>(s.T * s.E));
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    for (float& v : logits) v = normal(rng);
    std::vector<int32_t> tok(static_cast<size_t>(num_rows)), exp(static_cast<size_t>(num_rows)), off(static_cast<size_t>(s.E + 1)), gat(static_cast<size_t>(num_rows)),
        sca(static_cast<size_t>(num_rows)), rev(static_cast<size_t>(num_rows));
    std::vector<float> scores(static_cast<size_t>(num_rows));
    throw_if_error(reference::route_top_k({.num_tokens = s.T, .num_experts = s.E, .top_k = s.K,
                                           .logits = logits.data(), .token_idx = tok.data(),
                                           .expert_idx = exp.data(), .scores = scores.data()}));
    throw_if_error(reference::build_routing_metadata(
        {.num_tokens = s.T, .num_experts = s.E, .routing = {num_rows, tok.data(), exp.data(), scores.data()},
         .metadata = {off.data(), gat.data(), sca.data(), rev.data()}}));
    BENCH_CUDA(cudaMalloc(&offsets, off.size() * 4));
    BENCH_CUDA(cudaMalloc(&gather, gat.size() * 4));
    BENCH_CUDA(cudaMemcpy(offsets, off.data(), off.size() * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(gather, gat.data(), gat.size() * 4, cudaMemcpyHostToDevice));
  }
  ~Routing() {
    cudaFree(offsets);
    cudaFree(gather);
  }
};

// Relative Frobenius error of a bf16 device tensor against an fp32 device reference.
double relative_error(const __nv_bfloat16* got, const float* want, size_t count) {
  std::vector<__nv_bfloat16> g(count);
  std::vector<float> w(count);
  BENCH_CUDA(cudaMemcpy(g.data(), got, count * 2, cudaMemcpyDeviceToHost));
  BENCH_CUDA(cudaMemcpy(w.data(), want, count * 4, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < count; ++i) {
    const double a = __bfloat162float(g[i]), b = w[i];
    num += (a - b) * (a - b);
    den += b * b;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct Row {
  std::string key, role;
  double flops, ours_ms = -1, dense_ms = -1, error = -1;
  std::string note;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> shapes = {0, 1, 2};
  std::string roles = "up,down,dh,dw2,dx,dw1";
  int reps = 30;
  double sustain_ms = 0;
  const char* json = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--shapes") && i + 1 < argc) {
      shapes.clear();
      for (const char* p = argv[++i]; *p; ++p)
        if (*p >= '0' && *p <= '2') shapes.push_back(*p - '0');
    } else if (!std::strcmp(argv[i], "--roles") && i + 1 < argc) {
      roles = argv[++i];
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--sustain-ms") && i + 1 < argc) {
      sustain_ms = std::atof(argv[++i]);
    } else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
      json = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: gemm_bench [--shapes 0,1,2] [--roles up,down,dh,dw2,dx,dw1] [--reps N] [--sustain-ms MS] "
                   "[--json FILE]\n");
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // progress survives a timeout
  const DeviceInfo dev = query_device();
  if (!dev.is_hopper) {
    std::printf("gemm_bench: needs an sm_90 GPU: %s\n", dev.reason.c_str());
    return 0;
  }
  std::printf("card: %s (%d SMs); median of %d runs after %s\n", dev.name.c_str(), dev.multiprocessors, reps,
              sustain_ms > 0 ? (std::to_string(int(sustain_ms)) + " ms of back-to-back runs (steady clock)").c_str()
                             : "5 warm-up runs");
  cudaStream_t stream;
  BENCH_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t handle;
  BENCH_CUBLAS(cublasCreate(&handle));
  BENCH_CUBLAS(cublasSetStream(handle, stream));
  FILE* out = json ? std::fopen(json, "w") : nullptr;
  if (out)
    std::fprintf(out, "{\"card\": \"%s\", \"reps\": %d, \"sustain_ms\": %.0f, \"shapes\": [\n", dev.name.c_str(), reps,
                 sustain_ms);

  for (size_t si = 0; si < shapes.size(); ++si) {
    const Shape s = kShapes[shapes[si]];
    const int64_t TK = s.T * s.K;
    std::printf("\n(T,d,n,E,K) = (%lld,%lld,%lld,%lld,%lld), TK = %lld\n", (long long)s.T, (long long)s.d,
                (long long)s.n, (long long)s.E, (long long)s.K, (long long)TK);
    Routing routing(s, 1234 + si);
    DeviceBf16 x(size_t(s.T * s.d), 1.f, 1), w1(size_t(s.E * 2 * s.n * s.d), 1.f / std::sqrt(float(s.d)), 2),
        w2(size_t(s.E * s.d * s.n), 1.f / std::sqrt(float(s.n)), 3), a(size_t(TK * s.n), 1.f, 4),
        dh(size_t(TK * 2 * s.n), 1.f, 5);
    DeviceBf16 h(size_t(TK * 2 * s.n), 0.f, 6), a_out(size_t(TK * s.n), 0.f, 7), y(size_t(TK * s.d), 0.f, 8),
        dx_rows(size_t(TK * s.d), 0.f, 9);
    float* ref = nullptr;
    BENCH_CUDA(cudaMalloc(&ref, size_t(TK * std::max<int64_t>(2 * s.n, s.d)) * 4));

    std::vector<Row> rows;
    auto time_role = [&](Row row, int64_t dm, int64_t dn, int64_t dk, const std::function<Status()>& ours,
                         const std::function<double()>& check) {
      if (("," + roles + ",").find("," + row.key + ",") == std::string::npos) return;
      std::printf("  ... %s\n", row.role.c_str());
      DenseGemm dense(handle, dm, dn, dk);
      row.dense_ms = median_ms([&] { dense.run(); }, stream, 5, reps, sustain_ms);
      if (ours) {
        const Status st = ours();
        if (!st.ok()) {
          row.note = st.message();
        } else {
          // Timed first, checked after (the reference is slow), both before the row is printed.
          row.ours_ms = median_ms([&] { throw_if_error(ours()); }, stream, 5, reps, sustain_ms);
          row.error = check();
        }
      } else {
        row.note = "not implemented yet";
      }
      rows.push_back(row);
    };

    const UpProjParams up{.x = reinterpret_cast<const bfloat16*>(x.ptr), .w1 = reinterpret_cast<const bfloat16*>(w1.ptr),
                          .expert_offsets = routing.offsets, .gather_idx = routing.gather,
                          .h = reinterpret_cast<bfloat16*>(h.ptr), .a = reinterpret_cast<bfloat16*>(a_out.ptr),
                          .num_tokens = s.T, .num_rows = TK, .hidden = s.d, .intermediate = s.n, .num_experts = s.E};
    time_role({.key = "up", .role = "up_proj (gather+SwiGLU)", .flops = 2.0 * TK * s.d * 2 * s.n}, TK, 2 * s.n, s.d,
              [&] { return grouped_gemm_up_proj(up, stream); },
              [&] {
                BENCH_CUDA(gpu_reference::run(gpu_reference::RowsProblem{.num_rows = TK, .n = 2 * s.n, .k = s.d,
                                                                         .num_experts = s.E,
                                                                         .expert_offsets = routing.offsets,
                                                                         .gather_idx = routing.gather, .a = x.ptr,
                                                                         .b = w1.ptr, .b_is_nk = true, .out = ref},
                                              stream));
                BENCH_CUDA(cudaStreamSynchronize(stream));
                return relative_error(h.ptr, ref, size_t(TK * 2 * s.n));  // H; A is checked by the tests
              });
    const DownProjParams down{.a = reinterpret_cast<const bfloat16*>(a.ptr),
                              .w2 = reinterpret_cast<const bfloat16*>(w2.ptr), .expert_offsets = routing.offsets,
                              .y = reinterpret_cast<bfloat16*>(y.ptr), .num_rows = TK, .hidden = s.d,
                              .intermediate = s.n, .num_experts = s.E};
    time_role({.key = "down", .role = "down_proj", .flops = 2.0 * TK * s.n * s.d}, TK, s.d, s.n,
              [&] { return grouped_gemm_down_proj(down, stream); },
              [&] {
                BENCH_CUDA(gpu_reference::run(
                    gpu_reference::RowsProblem{.num_rows = TK, .n = s.d, .k = s.n, .num_experts = s.E,
                                               .expert_offsets = routing.offsets, .a = a.ptr, .b = w2.ptr,
                                               .b_is_nk = true, .out = ref},
                    stream));
                BENCH_CUDA(cudaStreamSynchronize(stream));
                return relative_error(y.ptr, ref, size_t(TK * s.d));
              });
    // dH: dO gathered, W2 as stored, the dSwiGLU / s·A / partial-dS epilogue. The check covers
    // the GEMM part through dS = Σ dA'·A (grad_h and a_scaled are checked by the tests).
    DeviceBf16 dout_g(size_t(s.T * s.d), 1.f, 13), grad_h(size_t(TK * 2 * s.n), 0.f, 14),
        a_scaled(size_t(TK * s.n), 0.f, 15);
    std::vector<float> host_scores(static_cast<size_t>(TK), 0.5f);
    std::vector<int32_t> identity(static_cast<size_t>(TK));
    for (int64_t i = 0; i < TK; ++i) identity[size_t(i)] = int32_t(i);
    float *scores = nullptr, *ds_partial = nullptr;
    int32_t* scatter = nullptr;
    const int64_t ds_cols = down_proj_act_grad_partial_cols(s.n);
    BENCH_CUDA(cudaMalloc(&scores, TK * 4));
    BENCH_CUDA(cudaMalloc(&scatter, TK * 4));
    BENCH_CUDA(cudaMalloc(&ds_partial, TK * ds_cols * 4));
    BENCH_CUDA(cudaMemcpy(scores, host_scores.data(), TK * 4, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(scatter, identity.data(), TK * 4, cudaMemcpyHostToDevice));
    const DownProjActGradParams dhp{.grad_out = reinterpret_cast<const bfloat16*>(dout_g.ptr),
                                    .w2 = reinterpret_cast<const bfloat16*>(w2.ptr),
                                    .h = reinterpret_cast<const bfloat16*>(dh.ptr), .scores = scores,
                                    .expert_offsets = routing.offsets, .gather_idx = routing.gather,
                                    .scatter_idx = scatter, .grad_h = reinterpret_cast<bfloat16*>(grad_h.ptr),
                                    .a_scaled = reinterpret_cast<bfloat16*>(a_scaled.ptr), .ds_partial = ds_partial,
                                    .num_tokens = s.T, .num_rows = TK, .hidden = s.d, .intermediate = s.n,
                                    .num_experts = s.E};
    time_role({.key = "dh", .role = "dH (gather+dSwiGLU+dS)", .flops = 2.0 * TK * s.d * s.n}, TK, s.n, s.d,
              [&] { return grouped_gemm_down_proj_act_grad(dhp, stream); },
              [&] {
                // dS = Σ_j dA'·A, with dA' from the GPU reference and A from the same H.
                BENCH_CUDA(gpu_reference::run(
                    gpu_reference::RowsProblem{.num_rows = TK, .n = s.n, .k = s.d, .num_experts = s.E,
                                               .expert_offsets = routing.offsets, .gather_idx = routing.gather,
                                               .a = dout_g.ptr, .b = w2.ptr, .b_is_nk = false, .out = ref},
                    stream));
                BENCH_CUDA(cudaStreamSynchronize(stream));
                std::vector<float> da(size_t(TK * s.n)), part(size_t(TK * ds_cols));
                std::vector<__nv_bfloat16> hh(size_t(TK * 2 * s.n));
                BENCH_CUDA(cudaMemcpy(da.data(), ref, da.size() * 4, cudaMemcpyDeviceToHost));
                BENCH_CUDA(cudaMemcpy(part.data(), ds_partial, part.size() * 4, cudaMemcpyDeviceToHost));
                BENCH_CUDA(cudaMemcpy(hh.data(), dh.ptr, hh.size() * 2, cudaMemcpyDeviceToHost));
                double num = 0, den = 0;
                for (int64_t r = 0; r < TK; ++r) {
                  double want = 0, got = 0;
                  for (int64_t j = 0; j < s.n; ++j) {
                    const double g = __bfloat162float(hh[size_t(r * 2 * s.n + 2 * j)]),
                                 u = __bfloat162float(hh[size_t(r * 2 * s.n + 2 * j + 1)]);
                    want += da[size_t(r * s.n + j)] * g / (1 + std::exp(-g)) * u;
                  }
                  for (int64_t c = 0; c < ds_cols; ++c) got += part[size_t(r * ds_cols + c)];
                  num += (got - want) * (got - want);
                  den += want * want;
                }
                return std::sqrt(num / den);
              });
    DeviceBf16 dout(size_t(s.T * s.d), 1.f, 10), dw2(size_t(s.E * s.d * s.n), 0.f, 11),
        dw1(size_t(s.E * 2 * s.n * s.d), 0.f, 12);
    const DownProjWeightGradParams dw2p{.grad_out = reinterpret_cast<const bfloat16*>(dout.ptr),
                                        .a_scaled = reinterpret_cast<const bfloat16*>(a.ptr),
                                        .expert_offsets = routing.offsets, .gather_idx = routing.gather,
                                        .grad_w2 = reinterpret_cast<bfloat16*>(dw2.ptr), .num_tokens = s.T,
                                        .num_rows = TK, .hidden = s.d, .intermediate = s.n, .num_experts = s.E};
    time_role({.key = "dw2", .role = "dW2 (gather, varlen K)", .flops = 2.0 * TK * s.d * s.n}, s.d, s.n, TK,
              [&] { return grouped_gemm_down_proj_weight_grad(dw2p, stream); },
              [&] {
                float* wref = nullptr;
                BENCH_CUDA(cudaMalloc(&wref, size_t(s.E * s.d * s.n) * 4));
                BENCH_CUDA(gpu_reference::run(
                    gpu_reference::WeightsProblem{.num_experts = s.E, .m = s.d, .n = s.n,
                                                  .expert_offsets = routing.offsets, .left_gather = routing.gather,
                                                  .left = dout.ptr, .right = a.ptr, .out = wref},
                    stream));
                BENCH_CUDA(cudaStreamSynchronize(stream));
                const double e = relative_error(dw2.ptr, wref, size_t(s.E * s.d * s.n));
                cudaFree(wref);
                return e;
              });
    const UpProjInputGradParams dxp{.dh = reinterpret_cast<const bfloat16*>(dh.ptr),
                                    .w1 = reinterpret_cast<const bfloat16*>(w1.ptr), .expert_offsets = routing.offsets,
                                    .dx_rows = reinterpret_cast<bfloat16*>(dx_rows.ptr), .num_rows = TK,
                                    .hidden = s.d, .intermediate = s.n, .num_experts = s.E};
    time_role({.key = "dx", .role = "dX~", .flops = 2.0 * TK * 2 * s.n * s.d}, TK, s.d, 2 * s.n,
              [&] { return grouped_gemm_up_proj_input_grad(dxp, stream); },
              [&] {
                BENCH_CUDA(gpu_reference::run(
                    gpu_reference::RowsProblem{.num_rows = TK, .n = s.d, .k = 2 * s.n, .num_experts = s.E,
                                               .expert_offsets = routing.offsets, .a = dh.ptr, .b = w1.ptr,
                                               .b_is_nk = false, .out = ref},
                    stream));
                BENCH_CUDA(cudaStreamSynchronize(stream));
                return relative_error(dx_rows.ptr, ref, size_t(TK * s.d));
              });
    const UpProjWeightGradParams dw1p{.grad_h = reinterpret_cast<const bfloat16*>(dh.ptr),
                                      .x = reinterpret_cast<const bfloat16*>(x.ptr), .expert_offsets = routing.offsets,
                                      .gather_idx = routing.gather, .grad_w1 = reinterpret_cast<bfloat16*>(dw1.ptr),
                                      .num_tokens = s.T, .num_rows = TK, .hidden = s.d, .h_cols = 2 * s.n,
                                      .num_experts = s.E};
    time_role({.key = "dw1", .role = "dW1 (gather, varlen K)", .flops = 2.0 * TK * 2 * s.n * s.d}, 2 * s.n, s.d, TK,
              [&] { return grouped_gemm_up_proj_weight_grad(dw1p, stream); },
              [&] {
                float* wref = nullptr;
                BENCH_CUDA(cudaMalloc(&wref, size_t(s.E * 2 * s.n * s.d) * 4));
                BENCH_CUDA(gpu_reference::run(
                    gpu_reference::WeightsProblem{.num_experts = s.E, .m = 2 * s.n, .n = s.d,
                                                  .expert_offsets = routing.offsets, .right_gather = routing.gather,
                                                  .left = dh.ptr, .right = x.ptr, .out = wref},
                    stream));
                BENCH_CUDA(cudaStreamSynchronize(stream));
                const double e = relative_error(dw1.ptr, wref, size_t(s.E * 2 * s.n * s.d));
                cudaFree(wref);
                return e;
              });

    std::printf("  %-26s %10s %9s %10s %9s %8s %10s\n", "role", "ours ms", "TFLOPS", "cuBLAS ms", "TFLOPS",
                "ratio", "rel.err");
    for (const Row& r : rows) {
      const double dense_tf = r.flops / r.dense_ms * 1e-9;
      if (r.ours_ms > 0) {
        const double tf = r.flops / r.ours_ms * 1e-9;
        std::printf("  %-26s %10.3f %9.1f %10.3f %9.1f %8.2f %10.2e\n", r.role.c_str(), r.ours_ms, tf, r.dense_ms,
                    dense_tf, r.dense_ms / r.ours_ms, r.error);
      } else {
        std::printf("  %-26s %10s %9s %10.3f %9.1f   (%s)\n", r.role.c_str(), "-", "-", r.dense_ms, dense_tf,
                    r.note.c_str());
      }
    }
    if (out) {
      std::fprintf(out, "  {\"shape\": [%lld, %lld, %lld, %lld, %lld], \"rows\": [\n", (long long)s.T,
                   (long long)s.d, (long long)s.n, (long long)s.E, (long long)s.K);
      for (size_t i = 0; i < rows.size(); ++i)
        std::fprintf(out, "    {\"role\": \"%s\", \"flops\": %.0f, \"ours_ms\": %.5f, \"cublas_dense_ms\": %.5f, "
                          "\"rel_error\": %.3e}%s\n",
                     rows[i].role.c_str(), rows[i].flops, rows[i].ours_ms, rows[i].dense_ms, rows[i].error,
                     i + 1 < rows.size() ? "," : "");
      std::fprintf(out, "  ]}%s\n", si + 1 < shapes.size() ? "," : "");
    }
    cudaFree(ref);
    cudaFree(scores);
    cudaFree(scatter);
    cudaFree(ds_partial);
  }
  if (out) {
    std::fprintf(out, "]}\n");
    std::fclose(out);
  }
  cublasDestroy(handle);
  return 0;
}
