// Timing and reporting helpers shared by the GPU benchmarks: CUDA-event medians after warm-up,
// random bf16 device tensors, and a dense cuBLAS GEMM of a given size as the ceiling to compare
// each grouped GEMM role with. Benchmarks only; no test depends on timings.
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
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
//
// sustain_ms > 0: the warm-up instead runs `fn` back to back for that long (wall time) first, so
// that the runs are timed at the GPU's steady power-limited clock. At the issue-3 shapes an
// H200 runs every GEMM, ours and the baselines, at its 700 W limit (nvidia-smi: the SW power
// cap active, 1.44-1.53 GHz); in the first ~0.5 s after idle it draws more and clocks higher, and
// a median of 30 runs of a few ms falls inside that window (docs/performance.md, thirteenth
// session). A training step runs at the steady clock.
inline double median_ms(const std::function<void()>& fn, cudaStream_t stream, int warmup = 5, int reps = 30,
                        double sustain_ms = 0) {
  for (int i = 0; i < warmup; ++i) fn();
  BENCH_CUDA(cudaStreamSynchronize(stream));
  const auto sustain_start = std::chrono::steady_clock::now();
  while (std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sustain_start).count() <
         sustain_ms) {
    for (int i = 0; i < 8; ++i) fn();  // a few runs queued at a time, so the GPU never idles
    BENCH_CUDA(cudaStreamSynchronize(stream));
  }
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

// Counter-based normal samples on the device (splitmix64 + Box-Muller): filling gigabytes of
// benchmark inputs on the host would take minutes.
__global__ void fill_normal_bf16_kernel(__nv_bfloat16* out, size_t count, float stddev, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u1 = (float((z >> 40) & 0xFFFFFF) + 1.f) / 16777217.f;  // (0, 1]
    const float u2 = float(z & 0xFFFFFF) / 16777216.f;
    out[i] = __float2bfloat16(stddev * sqrtf(-2.f * logf(u1)) * cospif(2.f * u2));
  }
}

// A device buffer of bf16 values ~ N(0, stddev²) (zeros when stddev is 0).
struct DeviceBf16 {
  __nv_bfloat16* ptr = nullptr;
  size_t count = 0;
  DeviceBf16(size_t n, float stddev, uint64_t seed) : count(n) {
    BENCH_CUDA(cudaMalloc(&ptr, n * sizeof(__nv_bfloat16)));
    if (stddev == 0.f)
      BENCH_CUDA(cudaMemset(ptr, 0, n * sizeof(__nv_bfloat16)));
    else
      fill_normal_bf16_kernel<<<2048, 256>>>(ptr, n, stddev, seed);
    BENCH_CUDA(cudaDeviceSynchronize());
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
