// src/gemm/kernel_sm90_varlen_k.cuh — the persistent warp-specialized kernel of the weight-
// gradient GEMMs (varlen K) and its bf16 store epilogue: a producer warpgroup filling the stages
// (cp.async gather + TMA), two consumer warpgroups issuing wgmma on a 128 x 256 tile, over the
// VarlenKTileScheduler. Same structure and register split as kernel_sm90_grouped.cuh (varlen M);
// the two are to become one kernel templated on the scheduler.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>
#include <cutlass/arch/reg_reconfig.h>

#include "gemm/mainloop_sm90_cpasync_varlen_k.cuh"
#include "gemm/scheduler_varlen_k.cuh"

namespace sonicmoe::gemm {

template <class Mainloop>
struct VarlenKKernelParams {
  typename Mainloop::Args mainloop;
  __nv_bfloat16* out;  // [E, m, n]
  const int32_t* expert_offsets;
  int num_experts;
  int num_rows;
};

template <class Cfg, class Mainloop>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    grouped_gemm_varlen_k_sm90_kernel(const __grid_constant__ VarlenKKernelParams<Mainloop> params) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace cute;
  using SharedStorage = typename Mainloop::SharedStorage;
  extern __shared__ uint8_t smem_raw[];
  const uintptr_t base = (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023);
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(base);
  if (threadIdx.x == 0) {
    Mainloop::init_barriers(ss);
    cute::prefetch_tma_descriptor(params.mainloop.tma.get_tma_descriptor());
  }
  __syncthreads();

  const auto& ml = params.mainloop;
  const VarlenKTileScheduler sched{params.expert_offsets, params.num_experts, params.num_rows,
                                   (ml.m + Cfg::kTileM - 1) / Cfg::kTileM, (ml.n + Cfg::kTileN - 1) / Cfg::kTileN};
  if (threadIdx.x / 128 == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegisters>();
    Mainloop::produce(ml, ss, sched);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kConsumerRegisters>();
    typename Mainloop::TiledMma tiled_mma;
    auto thr_mma = tiled_mma.get_thread_slice(threadIdx.x - 128);
    Tensor accum = partition_fragment_C(tiled_mma, Shape<Int<Cfg::kTileM>, Int<Cfg::kTileN>>{});
    Tensor coords = thr_mma.partition_C(make_identity_tensor(Shape<Int<Cfg::kTileM>, Int<Cfg::kTileN>>{}));
    int stage = 0;
    uint32_t phase = 0;
    for (int tile = blockIdx.x;; tile += gridDim.x) {
      VarlenKWorkTile work;
      if (!sched.find(tile, work)) break;
      Mainloop::mma(tiled_mma, thr_mma, accum, ss, Mainloop::k_tiles(work), stage, phase);
      // Epilogue: bf16 pairs straight from registers into the expert's dense [m, n] gradient.
      const int m0 = work.m_block * Cfg::kTileM, n0 = work.n_block * Cfg::kTileN;
      __nv_bfloat16* out = params.out + int64_t(work.expert) * ml.m * ml.n;
      const bool empty = work.rows == 0;  // the mainloop issued nothing: the gradient is zero
#pragma unroll
      for (int i = 0; i < size(accum); i += 2) {
        const int row = m0 + get<0>(coords(i));
        const int col = n0 + get<1>(coords(i));  // even; n is a multiple of 8
        if (row < ml.m && col < ml.n)
          *reinterpret_cast<__nv_bfloat162*>(out + int64_t(row) * ml.n + col) =
              empty ? __floats2bfloat162_rn(0.f, 0.f) : __floats2bfloat162_rn(accum(i), accum(i + 1));
      }
    }
  }
#endif
}

}  // namespace sonicmoe::gemm
