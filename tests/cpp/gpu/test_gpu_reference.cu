// The simple GPU reference (src/reference/gpu_reference.cuh) against double-precision host
// loops on small ragged problems: it is the yardstick for the fast kernels at large shapes, so
// it is checked first. Skips visibly without a Hopper GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "reference/gpu_reference.cuh"

namespace sonicmoe::testing {
namespace {

#define GPU_CHECK(call) ASSERT_EQ((call), cudaSuccess) << #call


template <class T>
T* to_device(const std::vector<T>& host) {
  T* ptr = nullptr;
  if (cudaMalloc(&ptr, host.size() * sizeof(T) + 16) != cudaSuccess) return nullptr;
  cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return ptr;
}

std::vector<__nv_bfloat16> random_bf16(size_t n, std::mt19937_64& rng, float stddev) {
  std::normal_distribution<float> normal(0.f, stddev);
  std::vector<__nv_bfloat16> v(n);
  for (auto& x : v) x = __float2bfloat16(normal(rng));
  return v;
}

double f(__nv_bfloat16 v) { return double(__bfloat162float(v)); }

// Ragged experts: sizes 0, 1, 5, 0, 9; TK = 15 rows gathered from T = 6 tokens.
const std::vector<int32_t> kOffsets = {0, 0, 1, 6, 6, 15};
const std::vector<int32_t> kGather = {3, 0, 1, 2, 4, 5, 0, 1, 2, 3, 4, 5, 1, 3, 5};

TEST(GpuReference, RowsMatchHostLoops) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const int64_t E = 5, TK = 15, T = 6, K = 40, N = 24;
  std::mt19937_64 rng(std::random_device{}());
  const auto a = random_bf16(size_t(T * K), rng, 1.f), b = random_bf16(size_t(E * N * K), rng, 0.2f),
             bias = random_bf16(size_t(E * N), rng, 0.1f);
  int32_t *d_off = to_device(kOffsets), *d_gather = to_device(kGather);
  __nv_bfloat16 *d_a = to_device(a), *d_b = to_device(b), *d_bias = to_device(bias);
  float* d_out = nullptr;
  GPU_CHECK(cudaMalloc(&d_out, TK * N * sizeof(float)));
  for (bool nk : {true, false}) {
    GPU_CHECK(cudaMemset(d_out, 0xff, TK * N * sizeof(float)));  // NaN poison
    GPU_CHECK(gpu_reference::run(gpu_reference::RowsProblem{.num_rows = TK, .n = N, .k = K, .num_experts = E,
                                                            .expert_offsets = d_off, .gather_idx = d_gather,
                                                            .a = d_a, .b = d_b, .b_is_nk = nk, .bias = d_bias,
                                                            .out = d_out},
                                 nullptr));
    std::vector<float> out(size_t(TK * N));
    GPU_CHECK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = kOffsets[size_t(e)]; r < kOffsets[size_t(e + 1)]; ++r)
        for (int64_t c = 0; c < N; ++c) {
          double acc = f(bias[size_t(e * N + c)]);
          for (int64_t k = 0; k < K; ++k)
            acc += f(a[size_t(kGather[size_t(r)] * K + k)]) *
                   f(b[size_t(nk ? e * N * K + c * K + k : e * N * K + k * N + c)]);
          const double got = out[size_t(r * N + c)];
          num += (got - acc) * (got - acc);
          den += acc * acc;
        }
    EXPECT_LT(std::sqrt(num / den), 1e-6) << (nk ? "B [E, n, k]" : "B [E, k, n]");
  }
  for (void* p : {(void*)d_off, (void*)d_gather, (void*)d_a, (void*)d_b, (void*)d_bias, (void*)d_out}) cudaFree(p);
}

TEST(GpuReference, WeightsMatchHostLoops) {
  SONICMOE_SKIP_WITHOUT_HOPPER();
  const int64_t E = 5, TK = 15, T = 6, M = 16, N = 24;
  std::mt19937_64 rng(std::random_device{}());
  const auto left = random_bf16(size_t(T * M), rng, 1.f), right = random_bf16(size_t(TK * N), rng, 1.f);
  int32_t *d_off = to_device(kOffsets), *d_gather = to_device(kGather);
  __nv_bfloat16 *d_left = to_device(left), *d_right = to_device(right);
  float* d_out = nullptr;
  GPU_CHECK(cudaMalloc(&d_out, E * M * N * sizeof(float)));
  GPU_CHECK(cudaMemset(d_out, 0xff, E * M * N * sizeof(float)));
  GPU_CHECK(gpu_reference::run(gpu_reference::WeightsProblem{.num_experts = E, .m = M, .n = N,
                                                             .expert_offsets = d_off, .left_gather = d_gather,
                                                             .right_gather = nullptr, .left = d_left,
                                                             .right = d_right, .out = d_out},
                               nullptr));
  std::vector<float> out(size_t(E * M * N));
  GPU_CHECK(cudaMemcpy(out.data(), d_out, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0;
        for (int64_t r = kOffsets[size_t(e)]; r < kOffsets[size_t(e + 1)]; ++r)
          acc += f(left[size_t(kGather[size_t(r)] * M + i)]) * f(right[size_t(r * N + j)]);
        const double got = out[size_t((e * M + i) * N + j)];
        ASSERT_FALSE(std::isnan(got)) << "unwritten element";
        if (kOffsets[size_t(e)] == kOffsets[size_t(e + 1)]) ASSERT_EQ(got, 0.0) << "empty expert not zero";
        num += (got - acc) * (got - acc);
        den += acc * acc;
      }
  EXPECT_LT(std::sqrt(num / den), 1e-6);
  for (void* p : {(void*)d_off, (void*)d_gather, (void*)d_left, (void*)d_right, (void*)d_out}) cudaFree(p);
}

}  // namespace
}  // namespace sonicmoe::testing
