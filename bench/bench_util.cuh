// Timing and reporting helpers shared by the GPU benchmarks: CUDA-event medians after warm-up,
// random bf16 device tensors, and a dense cuBLAS GEMM of a given size as the ceiling to compare
// each grouped GEMM role with. Benchmarks only; no test depends on timings.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#define BENCH_CUDA(call)                                                                       \
  do {                                                                                         \
    cudaError_t err_ = (call);                                                                 \
    if (err_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                            \
    }                                                                                          \
  } while (0)

#define BENCH_CUBLAS(call)                                                                   \
  do {                                                                                       \
    cublasStatus_t st_ = (call);                                                             \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                      \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, int(st_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

namespace sonicmoe::bench {

// Median milliseconds of `fn` on `stream` over `reps` runs after `warmup` runs.
inline double median_ms(const std::function<void()>& fn, cudaStream_t stream, int warmup = 5, int reps = 30) {
  for (int i = 0; i < warmup; ++i) fn();
  BENCH_CUDA(cudaStreamSynchronize(stream));
  BENCH_CUDA(cudaGetLastError());
  std::vector<float> ms(static_cast<size_t>(reps));
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(start, stream));
    fn();
    BENCH_CUDA(cudaEventRecord(stop, stream));
    BENCH_CUDA(cudaEventSynchronize(stop));
    BENCH_CUDA(cudaEventElapsedTime(&ms[static_cast<size_t>(i)], start, stop));
  }
  BENCH_CUDA(cudaGetLastError());
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// A device buffer of bf16 values ~ N(0, stddev²), filled on the host once.
struct DeviceBf16 {
  __nv_bfloat16* ptr = nullptr;
  size_t count = 0;
  DeviceBf16(size_t n, float stddev, uint64_t seed) : count(n) {
    std::vector<__nv_bfloat16> host(n);
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.f, stddev);
    for (auto& v : host) v = __float2bfloat16(normal(rng));
    BENCH_CUDA(cudaMalloc(&ptr, n * sizeof(__nv_bfloat16)));
    BENCH_CUDA(cudaMemcpy(ptr, host.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  }
  DeviceBf16(const DeviceBf16&) = delete;
  DeviceBf16& operator=(const DeviceBf16&) = delete;
  ~DeviceBf16() { cudaFree(ptr); }
};

// Dense row-major C[m, n] = A[m, k] · B[k, n] in bf16 with fp32 accumulation through cuBLAS
// (column-major view: Cᵀ = Bᵀ·Aᵀ). The operands are allocated once per size.
struct DenseGemm {
  cublasHandle_t handle = nullptr;
  int64_t m, n, k;
  DeviceBf16 a, b, c;
  DenseGemm(cublasHandle_t h, int64_t m_, int64_t n_, int64_t k_)
      : handle(h), m(m_), n(n_), k(k_), a(size_t(m_ * k_), 1.f, 11), b(size_t(k_ * n_), 1.f, 12),
        c(size_t(m_ * n_), 0.f, 13) {}
  void run() {
    const float alpha = 1.f, beta = 0.f;
    BENCH_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, b.ptr, CUDA_R_16BF,
                              int(n), a.ptr, CUDA_R_16BF, int(k), &beta, c.ptr, CUDA_R_16BF, int(n),
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
};

}  // namespace sonicmoe::bench
