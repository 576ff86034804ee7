// A simple GPU reference for the expert GEMM roles: one thread per output element, fp32
// accumulation, no tiling, no tensor cores. It exists to check the fast kernels at the
// benchmark's shapes, where the CPU reference would take minutes; it is itself checked against
// the CPU reference on small shapes (tests/cpp/gpu/test_gpu_reference.cu).
//
// Two forms cover all six roles of DESIGN.md §4:
//   rows  (varlen M): out[r, c] = Σ_k A[arow(r), k] · B_e(c, k) (+ bias_e[c]),  e = expert of row r
//   weights (varlen K): out[e, i, j] = Σ_{rows r of e} L[lrow(r), i] · R[rrow(r), j]
// where arow/lrow/rrow are the grouped row itself or gather_idx[r] (token order).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace sonicmoe::gpu_reference {

// B_e(c, k) = b[e][c][k] when b_is_nk (W1 in up-proj, W2 in down-proj), else b[e][k][c]
// (W2 in dH, W1 in dX̃).
struct RowsProblem {
  int64_t num_rows = 0;  // TK
  int64_t n = 0;         // output columns
  int64_t k = 0;         // reduction length
  int64_t num_experts = 0;
  const int32_t* expert_offsets = nullptr;  // [E+1] device
  const int32_t* gather_idx = nullptr;      // [TK] device, or null: A rows are grouped rows
  const __nv_bfloat16* a = nullptr;         // [*, k]
  const __nv_bfloat16* b = nullptr;         // [E, n, k] or [E, k, n]
  bool b_is_nk = true;
  const __nv_bfloat16* bias = nullptr;      // [E, n] or null
  float* out = nullptr;                     // [TK, n]
};

struct WeightsProblem {
  int64_t num_experts = 0;
  int64_t m = 0;  // rows of each expert's output (columns of L)
  int64_t n = 0;  // columns of each expert's output (columns of R)
  const int32_t* expert_offsets = nullptr;  // [E+1]
  const int32_t* left_gather = nullptr;     // [TK] or null
  const int32_t* right_gather = nullptr;    // [TK] or null
  const __nv_bfloat16* left = nullptr;      // [*, m]
  const __nv_bfloat16* right = nullptr;     // [*, n]
  float* out = nullptr;                     // [E, m, n]
};

namespace detail {

__device__ inline int64_t expert_of_row(const int32_t* offsets, int64_t num_experts, int64_t row) {
  int64_t lo = 0, hi = num_experts;  // offsets[lo] <= row < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= row) lo = mid; else hi = mid;
  }
  return lo;
}

// B_e(c, k) contiguous in k: one warp per output element, lanes striding over k, so both
// operands are read coalesced.
__global__ void rows_kernel_nk(RowsProblem p) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t total = p.num_rows * p.n;
  for (int64_t idx = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; idx < total; idx += warps) {
    const int64_t r = idx / p.n, c = idx % p.n;
    const int64_t e = expert_of_row(p.expert_offsets, p.num_experts, r);
    const int64_t arow = p.gather_idx ? p.gather_idx[r] : r;
    const __nv_bfloat16* a = p.a + arow * p.k;
    const __nv_bfloat16* b = p.b + (e * p.n + c) * p.k;
    float acc = 0.f;
    for (int64_t k = lane; k < p.k; k += 32) acc = fmaf(__bfloat162float(a[k]), __bfloat162float(b[k]), acc);
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (lane == 0) p.out[idx] = acc + (p.bias ? __bfloat162float(p.bias[e * p.n + c]) : 0.f);
  }
}

// B_e(c, k) contiguous in c: one thread per output element; neighbouring threads read
// neighbouring columns of B and the same row of A.
__global__ void rows_kernel_kn(RowsProblem p) {
  const int64_t total = p.num_rows * p.n;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / p.n, c = idx % p.n;
    const int64_t e = expert_of_row(p.expert_offsets, p.num_experts, r);
    const int64_t arow = p.gather_idx ? p.gather_idx[r] : r;
    const __nv_bfloat16* a = p.a + arow * p.k;
    const __nv_bfloat16* b = p.b + e * p.n * p.k;
    float acc = p.bias ? __bfloat162float(p.bias[e * p.n + c]) : 0.f;
    for (int64_t k = 0; k < p.k; ++k) acc = fmaf(__bfloat162float(a[k]), __bfloat162float(b[k * p.n + c]), acc);
    p.out[idx] = acc;
  }
}

__global__ void weights_kernel(WeightsProblem p) {
  const int64_t total = p.num_experts * p.m * p.n;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = idx / (p.m * p.n), i = (idx / p.n) % p.m, j = idx % p.n;
    float acc = 0.f;
    for (int64_t r = p.expert_offsets[e]; r < p.expert_offsets[e + 1]; ++r) {
      const int64_t lrow = p.left_gather ? p.left_gather[r] : r;
      const int64_t rrow = p.right_gather ? p.right_gather[r] : r;
      acc = fmaf(__bfloat162float(p.left[lrow * p.m + i]), __bfloat162float(p.right[rrow * p.n + j]), acc);
    }
    p.out[idx] = acc;
  }
}

}  // namespace detail

inline cudaError_t run(const RowsProblem& p, cudaStream_t stream) {
  if (p.num_rows == 0 || p.n == 0) return cudaSuccess;
  if (p.b_is_nk)
    detail::rows_kernel_nk<<<8192, 256, 0, stream>>>(p);
  else
    detail::rows_kernel_kn<<<4096, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

inline cudaError_t run(const WeightsProblem& p, cudaStream_t stream) {
  if (p.num_experts == 0 || p.m == 0 || p.n == 0) return cudaSuccess;
  detail::weights_kernel<<<4096, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sonicmoe::gpu_reference
