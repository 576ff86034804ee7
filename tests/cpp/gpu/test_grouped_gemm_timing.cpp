// tests/cpp/gpu/test_grouped_gemm_timing.cpp — a timing printout (not a timed test: nothing is
// asserted about speed) of the grouped GEMM roles at the 7B shape of DESIGN.md §5,
// (T, d, n, E, K) = (24576, 1536, 256, 128, 8), uniform top-K routing. Runs only with
// SONICMOE_GEMM_TIMING=1 on a Hopper GPU: median of CUDA-event timings after warm-up.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "sonicmoe/grouped_gemm.h"

namespace sonicmoe {
namespace {

using gpu_testing::DeviceBuffer;

// Cheap uniform fill in [-scale, scale]: timing does not need normal variates, and 10^8 of them
// would dominate the test's run time on the host.
std::vector<bfloat16> fast_fill(size_t count, float scale, uint64_t seed) {
  std::vector<bfloat16> v(count);
  uint64_t s = seed | 1;
  for (auto& e : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    e = bfloat16(scale * (float(s >> 40) / float(1 << 24) * 2.0f - 1.0f));
  }
  return v;
}

template <class Launch>
double median_ms(Launch launch, int warmup = 5, int iters = 20) {
  for (int i = 0; i < warmup; ++i) launch();
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> ms(iters);
  for (int i = 0; i < iters; ++i) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    cudaEventElapsedTime(&ms[i], start, stop);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[iters / 2];
}

TEST(GroupedGemmTiming, UpProjDownProj7B) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  if (!std::getenv("SONICMOE_GEMM_TIMING")) GTEST_SKIP() << "set SONICMOE_GEMM_TIMING=1 for the timing printout";
  const int64_t T = 24576, d = 1536, n = 256, E = 128, K = 8, TK = T * K;
  std::mt19937_64 rng(1234);
  // Uniform top-K routing: K distinct experts per token.
  std::vector<std::vector<int32_t>> rows_of(E);
  std::vector<int32_t> experts(E);
  std::iota(experts.begin(), experts.end(), 0);
  for (int32_t t = 0; t < T; ++t) {
    for (int k = 0; k < K; ++k) std::swap(experts[k], experts[k + rng() % (E - k)]);
    for (int k = 0; k < K; ++k) rows_of[experts[k]].push_back(t);
  }
  std::vector<int32_t> offsets{0}, gather;
  for (auto& rows : rows_of) {
    gather.insert(gather.end(), rows.begin(), rows.end());
    offsets.push_back(int32_t(gather.size()));
  }
  DeviceBuffer<bfloat16> dx(fast_fill(T * d, 1.7f, 1)), dw1(fast_fill(E * 2 * n * d, 0.044f, 2)),
      dw2(fast_fill(E * d * n, 0.1f, 3)), dh(TK * 2 * n), da(TK * n), dy(TK * d);
  DeviceBuffer<int32_t> doffsets(offsets), dgather(gather);
  ASSERT_TRUE(dx.ok() && dw1.ok() && dw2.ok() && dh.ok() && da.ok() && dy.ok());
  const UpProjParams up{.x = dx.get(), .w1 = dw1.get(), .expert_offsets = doffsets.get(),
                        .gather_idx = dgather.get(), .h = dh.get(), .a = da.get(), .num_tokens = T,
                        .num_rows = TK, .hidden = d, .intermediate = n, .num_experts = E};
  const DownProjParams down{.a = da.get(), .w2 = dw2.get(), .expert_offsets = doffsets.get(), .y = dy.get(),
                            .num_rows = TK, .hidden = d, .intermediate = n, .num_experts = E};
  const UpProjInputGradParams dxg{.dh = dh.get(), .w1 = dw1.get(), .expert_offsets = doffsets.get(),
                                 .dx_rows = dy.get(), .num_rows = TK, .hidden = d, .intermediate = n,
                                 .num_experts = E};
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj(up, nullptr));
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_down_proj(down, nullptr));
  SONICMOE_ASSERT_OK_GPU(grouped_gemm_up_proj_input_grad(dxg, nullptr));
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const double up_ms = median_ms([&] { (void)grouped_gemm_up_proj(up, nullptr); });
  const double down_ms = median_ms([&] { (void)grouped_gemm_down_proj(down, nullptr); });
  const double dx_ms = median_ms([&] { (void)grouped_gemm_up_proj_input_grad(dxg, nullptr); });
  SONICMOE_CUDA_CHECK(cudaDeviceSynchronize());
  const double up_flop = 2.0 * TK * d * 2 * n, down_flop = 2.0 * TK * n * d;
  std::printf("[timing] card: %s\n", gpu_testing::device_name().c_str());
  std::printf("[timing] (T,d,n,E,K)=(%lld,%lld,%lld,%lld,%lld) up-proj (gather+SwiGLU, H and A): %.3f ms, %.1f TFLOPS\n",
              (long long)T, (long long)d, (long long)n, (long long)E, (long long)K, up_ms, up_flop / up_ms * 1e-9);
  std::printf("[timing] (T,d,n,E,K)=(%lld,%lld,%lld,%lld,%lld) down-proj (Y): %.3f ms, %.1f TFLOPS\n", (long long)T,
              (long long)d, (long long)n, (long long)E, (long long)K, down_ms, down_flop / down_ms * 1e-9);
  std::printf("[timing] (T,d,n,E,K)=(%lld,%lld,%lld,%lld,%lld) up-proj input grad (dX~ = dH W1): %.3f ms, %.1f TFLOPS\n",
              (long long)T, (long long)d, (long long)n, (long long)E, (long long)K, dx_ms, up_flop / dx_ms * 1e-9);
}

}  // namespace
}  // namespace sonicmoe
